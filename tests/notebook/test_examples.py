"""The example notebooks run top to bottom (nbclient, the running interpreter's kernel), and the README's
Python snippet runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.ipynb"))
SHARED = Path(os.environ.get("DOMAINFM_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
NEEDS_DATA = {"medical.ipynb": "medical", "remote_sensing.ipynb": "remote_sensing", "pathology.ipynb": "pathology"}


KERNEL = "domainfm-tests"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernel spec that runs this interpreter (the venv's), whatever ``python3`` resolves to."""
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root), *([old] if old else [])])
    yield KERNEL
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_notebook_runs(path, tmp_path, kernel_name):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    folder = NEEDS_DATA.get(path.name)
    if folder and not (SHARED / folder).is_dir():
        pytest.skip(f"{path.name} needs the shared sample data {SHARED / folder} (absent here)")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name=kernel_name, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "FoundationModel(" in shown  # objects show themselves, not a module tree


def test_readme_python_snippet_runs_as_written(tmp_path):
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"Python \(notebook\):.*?```python\n(.*?)```", text, re.S).group(1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
