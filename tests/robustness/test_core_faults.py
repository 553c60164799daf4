"""Run folders and checkpoints under faults: a second process, stale locks and temp folders, a full
disk, a damaged newest checkpoint, outputs where nothing can be written, memory that does not fit."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import yaml

import domainfm
import domainfm.train.checkpoint as ckpt_mod
from domainfm.io_safety import LOCK_NAME, RunLock
from domainfm.train.checkpoint import latest_intact, list_checkpoints
from tests.conftest import tiny_config
from tests.robustness.conftest import assert_one_line_error, digest, run_cli


def _config_file(tmp_path, **train) -> str:
    cfg = tiny_config(tmp_path / "run", train={"steps": 2, "ckpt_every": 1, **train})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_second_process_refused_naming_the_holder(tmp_path, capsys):
    # alive for as long as the test may take (it is killed at the end), whatever the machine's load
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / LOCK_NAME).write_text(f"{holder.pid} {os.uname().nodename}\n")
        code, err = run_cli(["pretrain", _config_file(tmp_path)], capsys)
        assert code == 2
        assert_one_line_error(err, str(run), f"pid {holder.pid}")
        assert not (run / "config.yaml").exists()  # nothing of the refused run was written
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_and_tmp_folders_are_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(f"{dead.pid} {os.uname().nodename}\n")
    (run / ".tmp-ckpt-0000001-999999").mkdir()
    code, err = run_cli(["pretrain", _config_file(tmp_path)], capsys)
    assert code == 0, err
    assert not (run / ".tmp-ckpt-0000001-999999").exists() and not (run / LOCK_NAME).exists()
    assert [p.name for p in list_checkpoints(run)][-1] == "ckpt-0000002"


def test_disk_full_during_checkpoint_is_one_line_and_leaves_no_tmp(tmp_path, capsys, monkeypatch):
    cfg = _config_file(tmp_path)
    calls = {"n": 0}
    real = ckpt_mod.save_file

    def full_after_first(*args, **kwargs):  # the 2nd checkpoint meets a full disk
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt_mod, "save_file", full_after_first)
    code, err = run_cli(["pretrain", cfg], capsys)
    assert code == 2
    line = assert_one_line_error(err, "ckpt-0000002", "disk full", "ckpt-0000001")
    run = tmp_path / "run"
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")], line
    assert not (run / LOCK_NAME).exists()


def test_damaged_newest_checkpoint_falls_back_on_resume(tmp_path, capsys, caplog):
    cfg = tiny_config(tmp_path / "run", train={"steps": 2, "ckpt_every": 1, "keep_last": 0})
    domainfm.pretrain(cfg)
    run = tmp_path / "run"
    first, newest = list_checkpoints(run)
    (newest / "model.safetensors").write_bytes((newest / "model.safetensors").read_bytes()[:100])
    before = digest(first)
    assert latest_intact(run) == first and domainfm.load(run).path == first
    cfg["train"]["steps"] = 3
    ckpt = domainfm.pretrain(cfg, resume=True)
    assert ckpt.name == "ckpt-0000003" and "damaged" in caplog.text
    assert digest(first) == before


@pytest.mark.parametrize("where", ["under_a_file", "not_writable"])
def test_unwritable_out_is_one_line(tmp_path, capsys, where):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    if where == "under_a_file":
        out = blocker / "run"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere: permissions cannot be exercised")
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "run"
    cfg = _config_file(tmp_path)
    code, err = run_cli(["pretrain", cfg, "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, str(out))
    assert blocker.read_text() == "x"


def test_memory_that_does_not_fit_is_refused_before_the_first_step(tmp_path, capsys, monkeypatch):
    import domainfm.memory as memory

    monkeypatch.setattr(memory, "available_ram", lambda: 2 * 1024**2)
    code, err = run_cli(["pretrain", _config_file(tmp_path)], capsys)
    assert code == 2
    assert_one_line_error(err, "needs about", "batch 8", "grad_checkpointing")
    assert not list_checkpoints(tmp_path / "run")


def test_grad_checkpointing_trains_the_same_weights(tmp_path):
    import torch

    from domainfm.train.checkpoint import load_tensors

    a = domainfm.pretrain(tiny_config(tmp_path / "a", train={"steps": 2}))
    b = domainfm.pretrain(tiny_config(tmp_path / "b", train={"steps": 2, "grad_checkpointing": True}))
    ta, tb = load_tensors(a), load_tensors(b)
    assert all(torch.allclose(ta[k], tb[k], atol=1e-5) for k in ta)


def test_run_lock_is_reentrant_and_released(tmp_path):
    with RunLock(tmp_path):
        with RunLock(tmp_path):
            assert (tmp_path / LOCK_NAME).exists()
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_sigint_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    cfg = tiny_config(tmp_path / "run", train={"steps": 100000, "ckpt_every": 100000, "batch_size": 4})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "domainfm.cli", "pretrain", str(path)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = tmp_path / "run" / "metrics.csv"
    import time

    def logged() -> bool:
        return metrics.exists() and metrics.read_text().count("\n") > 8

    deadline = time.monotonic() + 600  # a guard against a hung run, not a speed requirement
    while not logged() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert logged(), "the run logged no steps (it ended or hung before the interrupt could be sent)"
    proc.send_signal(2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with: domainfm pretrain --resume --out" in err
    ckpts = list_checkpoints(tmp_path / "run")
    assert len(ckpts) == 1 and 0 < int(ckpts[0].name.split("-")[1]) < 100000


def test_printed_finetune_resume_command_continues_the_run(tmp_path, capsys):
    import shutil

    from domainfm.train.engine import resume_command

    pre = domainfm.pretrain(tiny_config(tmp_path / "pre", train={"steps": 1}))
    ft = domainfm.finetune(
        pre,
        task="classification",
        out=tmp_path / "ft",
        overrides=["train.steps=2", "train.ckpt_every=1", "train.keep_last=0"],
    )
    shutil.rmtree(ft)  # as if interrupted after step 1
    command = resume_command(domainfm.load(tmp_path / "ft").card, tmp_path / "ft")
    code, err = run_cli(command.split()[1:], capsys)
    assert code == 0, err
    assert [p.name for p in list_checkpoints(tmp_path / "ft")] == ["ckpt-0000001", "ckpt-0000002"]
