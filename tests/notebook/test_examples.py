"""The example notebooks run top to bottom (nbclient, the running interpreter's kernel), and the README's
Python snippet runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.ipynb"))
SHARED = Path(os.environ.get("DOMAINFM_DATA", "/work/shared/data"))
NEEDS_DATA = {"medical.ipynb": "medical", "remote_sensing.ipynb": "remote_sensing", "pathology.ipynb": "pathology"}


def _kernel_name() -> str:
    spec = pytest.importorskip("jupyter_client.kernelspec").KernelSpecManager().get_kernel_spec("python3")
    if Path(spec.argv[0]).resolve() != Path(sys.executable).resolve():
        pytest.skip(f"the python3 kernel runs {spec.argv[0]}, not this interpreter {sys.executable}")
    return "python3"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_notebook_runs(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    folder = NEEDS_DATA.get(path.name)
    if folder and not (SHARED / folder).is_dir():
        pytest.skip(f"{path.name} needs the shared sample data {SHARED / folder} (absent here)")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name=_kernel_name(), resources={"metadata": {"path": str(tmp_path)}}
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
