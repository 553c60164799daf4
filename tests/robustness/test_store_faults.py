"""Stores and bad input: a path that is not a store, a damaged manifest, a store of another domain, and an
unreadable source among good ones (named in one line, the others prepared, the inputs untouched)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from domainfm.errors import DomainFMError
from domainfm.store import StoreError, open_store, prepare
from tests.robustness.conftest import assert_one_line_error, digest, run_cli

pytest.importorskip("zarr")


def _store(tmp_path: Path, n: int = 2) -> tuple[Path, Path]:
    from domainfm.medical.synthetic import write_ct_nifti_folder

    src = write_ct_nifti_folder(tmp_path / "ct", n=n, shape=(16, 16, 8))[0].parent
    prepare("medical", src, tmp_path / "store", workers=1, options={"modality": "ct"}, progress=False)
    return src, tmp_path / "store"


def _one_line(exc: BaseException, *names) -> None:
    text = str(exc)
    assert "\n" not in text
    for name in names:
        assert str(name) in text, (name, text)


def test_a_folder_that_is_not_a_store(tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "notes.txt").write_text("x")
    with pytest.raises(StoreError) as exc:
        open_store(tmp_path / "scans")
    _one_line(exc.value, tmp_path / "scans", "not a domainfm store", "domainfm prepare")
    before = digest(tmp_path / "scans")
    code, err = run_cli(
        ["prepare", "--domain", "medical", "--data", tmp_path / "ct", "--out", tmp_path / "scans"], capsys
    )
    assert code == 2
    assert_one_line_error(err)
    assert digest(tmp_path / "scans") == before


def test_a_damaged_manifest(tmp_path, capsys):
    src, store = _store(tmp_path)
    (store / "manifest.json").write_text('{"format": "domainfm-store", "dom')
    with pytest.raises(StoreError) as exc:
        open_store(store)
    _one_line(exc.value, store / "manifest.json", "damaged")
    before = digest(src)
    code, err = run_cli(["prepare", "--domain", "medical", "--data", src, "--out", store, "--modality", "ct"], capsys)
    assert code == 2
    assert_one_line_error(err, "manifest.json", "damaged")
    assert digest(src) == before


def test_a_store_of_another_domain(tmp_path, capsys):
    _, store = _store(tmp_path)
    with pytest.raises(StoreError) as exc:
        open_store(store, domain="pathology")
    _one_line(exc.value, store, "holds medical data, not pathology")
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "a.tif").write_bytes(b"not a slide")
    code, err = run_cli(["prepare", "--domain", "pathology", "--data", tmp_path / "slides", "--out", store], capsys)
    assert code == 2
    assert_one_line_error(err, "holds medical data, not pathology")


def test_an_unreadable_source_is_named_and_the_others_are_prepared(tmp_path, capsys):
    from domainfm.medical.synthetic import write_ct_nifti_folder

    src = write_ct_nifti_folder(tmp_path / "ct", n=3, shape=(16, 16, 8))[0].parent
    (src / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file")
    before = digest(src)
    store = tmp_path / "store"
    code, err = run_cli(["prepare", "--domain", "medical", "--data", src, "--out", store, "--modality", "ct"], capsys)
    assert code == 2
    assert_one_line_error(err, "broken.nii.gz", "1 source(s) could not be prepared")
    assert sorted(p.name for p in (store / "items").iterdir()) == ["ct_0", "ct_1", "ct_2"]
    assert len(open_store(store)) == 3
    assert digest(src) == before


def test_a_damaged_chunk_is_named_in_one_line(tmp_path):
    _, store = _store(tmp_path, n=1)
    chunk = next((store / "items" / "ct_0" / "image" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.write_bytes(b"not a blosc frame")
    with pytest.raises(StoreError) as exc:
        open_store(store, crop=8, cache_mb=0)[0]
    _one_line(exc.value, chunk, "damaged chunk", "prepare the store again")
    (store / "items" / "ct_0" / "image" / "zarr.json").write_text("{")
    with pytest.raises(StoreError) as exc:
        open_store(store, crop=8)[0]
    _one_line(exc.value, store / "items" / "ct_0" / "image" / "zarr.json", "damaged")


def test_an_option_that_contradicts_the_store(tmp_path, capsys):
    """Pretraining from a CT store with ``--modality mri`` is one line naming the store and the option; the
    store is left as it was."""
    _, store = _store(tmp_path)
    before = digest(store)
    code, err = run_cli(
        ["pretrain", "--domain", "medical", "--data", store, "--out", tmp_path / "run", "--modality", "mri"], capsys
    )
    assert code == 2
    assert_one_line_error(err, str(store), "modality", "prepare the store again")
    assert digest(store) == before


def test_without_the_store_extra_prepare_and_reading_say_what_to_install(tmp_path, capsys, monkeypatch):
    """Without zarr and numcodecs (the ``store`` extra), ``domainfm prepare`` and reading a store are one line
    naming the extra, not a ModuleNotFoundError from inside a worker; the inputs stay as they were."""
    src, store = _store(tmp_path)
    before = digest(src), digest(store)
    for name in ("zarr", "zarr.codecs", "numcodecs", "numcodecs.blosc"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of it now fails as if not installed
    code, err = run_cli(
        ["prepare", "--domain", "medical", "--data", src, "--out", tmp_path / "other", "--modality", "ct"], capsys
    )
    assert code == 2
    assert_one_line_error(err, "zarr", "pip install 'domainfm[store]'")
    with pytest.raises(DomainFMError) as exc:
        open_store(store, crop=8)[0]
    _one_line(exc.value, "numcodecs", "domainfm[store]")
    assert (digest(src), digest(store)) == before
