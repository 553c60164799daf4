"""Every writer's ``exist_ok`` (io_safety.check_exists): an existing output is refused in one line naming it
("pass exist_ok=True to replace it"; the CLI says ``--exist-ok``), replaced atomically when asked, and an
input or a checkpoint is never replaced."""

from __future__ import annotations

import numpy as np
import pytest

import domainfm
from domainfm.cli import cli_words
from domainfm.errors import ConfigError, DataError
from domainfm.io_safety import check_exists, check_output, exist_ok_policy
from tests.conftest import TINY_MODEL
from tests.robustness.conftest import assert_one_line_error, digest, run_cli

X = np.random.default_rng(0).integers(0, 255, (12, 1, 16, 16)).astype(np.uint8)


@pytest.fixture(scope="module")
def arrays_ckpt(tmp_path_factory):
    """A tiny checkpoint of the arrays domain (it reads .npy files too, so the CLI can embed)."""
    cfg = {
        "out": str(tmp_path_factory.mktemp("arrays") / "run"),
        "model": {**TINY_MODEL, "depth": 1, "embed_dim": 32},
        "train": {"steps": 1, "batch_size": 4, "progress": False, "tensorboard": False},
    }
    return domainfm.pretrain(cfg, data=X)


def test_the_one_rule_words_and_what_stays_refused(arrays_ckpt, tmp_path):
    out = tmp_path / "e.npz"
    out.write_bytes(b"old")
    with pytest.raises(ConfigError) as exc:
        check_exists(out)
    msg = str(exc.value)
    assert str(out) in msg and "pass exist_ok=True to replace it" in msg and "\n" not in msg
    assert "pass --exist-ok to replace it" in cli_words(msg) and "or another --out" in cli_words(msg)
    assert check_exists(out, exist_ok=True) is True and check_exists(tmp_path / "new.npz") is False
    (tmp_path / "empty").mkdir()
    assert check_exists(tmp_path / "empty") is False  # an empty folder holds no output
    with pytest.raises(DataError, match="holds the input"):
        check_exists(tmp_path, exist_ok=True, inputs=[out])
    for taken in (arrays_ckpt, arrays_ckpt.parent, arrays_ckpt / "card.json"):
        with pytest.raises(DataError, match="checkpoint"):
            check_exists(taken, exist_ok=True)
    with pytest.raises(ConfigError, match="exist_ok must be True or False"):
        check_exists(out, exist_ok="sometimes")
    with exist_ok_policy(False), pytest.raises(ConfigError, match="already exists"):
        check_output(out)  # the rule reaches every file name a domain's writer derives from out
    assert out.read_bytes() == b"old"


def test_embed_refuses_an_existing_out_and_replaces_it_when_asked(arrays_ckpt, tmp_path, capsys):
    out = tmp_path / "e.npz"
    domainfm.embed(arrays_ckpt, X, out)
    before = digest(out)
    with pytest.raises(ConfigError, match="already exists; pass exist_ok=True"):
        domainfm.embed(arrays_ckpt, X, out)
    assert digest(out) == before
    domainfm.embed(arrays_ckpt, X[::-1].copy(), out, exist_ok=True)
    replaced = digest(out)
    assert replaced != before and sorted(p.name for p in tmp_path.iterdir()) == ["e.npz"]
    # the CLI: the same rule in flags
    np.save(tmp_path / "x.npy", X)
    code, err = run_cli(["embed", arrays_ckpt, "--data", tmp_path / "x.npy", "--out", out], capsys)
    assert code == 2
    assert_one_line_error(err, str(out), "pass --exist-ok to replace it")
    code, _ = run_cli(["embed", arrays_ckpt, "--data", tmp_path / "x.npy", "--out", out, "--exist-ok"], capsys)
    assert code == 0 and digest(out) == before != replaced  # X again, in its own order


def test_evaluate_refuses_an_earlier_report_before_any_work(arrays_ckpt, tmp_path):
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(ConfigError, match="report.json already exists; pass exist_ok=True"):
        domainfm.evaluate(
            arrays_ckpt, X, labels=np.arange(12) % 2, test_data=X, test_labels=np.arange(12) % 2, out=tmp_path
        )
    assert (tmp_path / "report.json").read_text() == "{}"
