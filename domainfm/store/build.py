"""``prepare(domain, data, out)``: run a domain's deterministic preprocessing once per source file and
write a chunked, compressed zarr v3 store with a manifest (see :mod:`domainfm.store.layout`).

Parallel over files (processes), resumable (an item is written under ``tmp/`` and renamed into
``items/`` only when complete, then journalled: a finished item is never redone), safe to run twice
(nothing to do is said, and nothing is written), with provenance (source paths, sizes, modification
times, the preprocessing settings, software versions).

Example:
    >>> PrepareReport("s", prepared=["a"], kept=2, failed=[("b.nii", "b.nii: unreadable")]).summary()
    's: 1 item(s) prepared, 2 already there, 1 failed'
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from multiprocessing import get_context
from pathlib import Path

from domainfm.errors import DomainFMError
from domainfm.io_safety import RunLock, write_json_atomic
from domainfm.runconfig import load_config

from .layout import (
    COMPRESSION,
    FORMAT,
    FORMAT_VERSION,
    ITEMS,
    JOURNAL,
    MANIFEST,
    TMP,
    ItemWriter,
    StoreError,
    append_journal,
    compressor,
    create_root,
    file_stamp,
    item_record,
    jsonable,
    read_journal,
    read_manifest,
    remove_tree,
    safe_key,
)
from .spec import Source, get_store_spec

SHOWN_FAILURES = 3
#: settings that may change as sources are added (the loader's defaults, the decision texts): not compared
NOT_COMPARED = ("decisions", "crop", "classes")


@dataclass
class PrepareReport:
    """What a :func:`prepare` run did: ``prepared`` keys, ``kept`` (already there), ``failed``
    ``(path, reason)`` pairs, the ``seconds`` it took and whether it had ``nothing_to_do``."""

    store: str
    prepared: list[str] = field(default_factory=list)
    kept: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    nothing_to_do: bool = False

    def summary(self) -> str:
        if self.nothing_to_do:
            return f"{self.store}: all {self.kept} item(s) already prepared; nothing to do"
        text = f"{self.store}: {len(self.prepared)} item(s) prepared, {self.kept} already there"
        return text + (f", {len(self.failed)} failed" if self.failed else "")

    def failure_text(self) -> str:
        """One line naming the sources that could not be prepared and what to do."""
        shown = "; ".join(reason for _, reason in self.failed[:SHOWN_FAILURES])
        more = f" (and {len(self.failed) - SHOWN_FAILURES} more)" if len(self.failed) > SHOWN_FAILURES else ""
        return (
            f"{len(self.failed)} source(s) could not be prepared{more}: {shown}; the others are in {self.store}: "
            "fix or remove the files named and run prepare again (finished items are kept)"
        )


def software_versions() -> dict:
    """Versions recorded as provenance (the kit, zarr, numpy, torch, Python)."""
    out = {"python": platform.python_version()}
    for name in ("domainfm", "zarr", "numcodecs", "numpy", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            mod = sys.modules.get(name)
            out[name] = getattr(mod, "__version__", None)
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _check_out(out: Path, data: Path) -> None:
    if out.exists() and not out.is_dir():
        raise StoreError(out, "exists and is not a folder; give a new --out for the store")
    if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
        raise StoreError(out, f"is inside the input {data}; give an --out outside it (inputs are never changed)")
    if out.is_dir() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise StoreError(out, "exists, is not empty and is not a store; give a new or empty --out")


def _unique_sources(sources: list[Source]) -> list[Source]:
    """Sources with folder-safe keys, unique (a clash gets the position appended)."""
    seen: set[str] = set()
    out = []
    for i, src in enumerate(sources):
        key = safe_key(src.key)
        if key in seen:
            key = f"{key}-{i}"
        seen.add(key)
        out.append(dataclasses.replace(src, key=key))
    return out


def _known_records(out: Path, manifest: dict | None) -> dict[str, dict]:
    """Finished items: the manifest's, the journal's, and complete groups in ``items/`` not yet recorded
    (a run stopped between the rename and the journal line)."""
    records = {r["key"]: r for r in (manifest or {}).get("items", []) if isinstance(r, dict) and "key" in r}
    records.update({r["key"]: r for r in read_journal(out)})
    items = out / ITEMS
    if items.is_dir():
        for folder in items.iterdir():
            if folder.name not in records:
                rec = item_record(folder)
                if rec is not None and rec.get("key") == folder.name:
                    records[folder.name] = rec
    return {k: r for k, r in records.items() if (items / k / "zarr.json").is_file()}


def _stamps(src: Source) -> list[dict] | None:
    try:
        return [file_stamp(f) for f in src.files]
    except OSError:
        return None  # the item's own run names the file


def _plan(sources: list[Source], records: dict[str, dict]) -> tuple[list[tuple[Source, list]], int]:
    """``(sources to prepare with their stamps, number already there)``: an item is redone only when its
    files changed (size or modification time) or it never finished."""
    todo, kept = [], 0
    for src in sources:
        stamps = _stamps(src)
        rec = records.get(src.key)
        if rec is not None and stamps is not None and rec.get("stamps") == stamps:
            kept += 1
        else:
            todo.append((src, stamps or []))
    return todo, kept


def _existing(out: Path, domain: str, settings: dict) -> dict | None:
    """The manifest of an existing store at ``out`` after checking it is this domain's with the same settings."""
    if not (out / MANIFEST).exists():
        return None
    manifest = read_manifest(out, domain)
    old = manifest["settings"]
    keys = sorted(k for k in set(settings) | set(old) if k not in NOT_COMPARED and settings.get(k) != old.get(k))
    if keys:
        raise StoreError(
            out,
            f"was prepared with other preprocessing ({', '.join(keys[:4])} differ); "
            "give the same options to continue it, or a new --out",
        )
    return manifest


def _prepare_one(
    domain: str, settings: dict, source: Source, stamps: list, tmp: str, compression: str = COMPRESSION
) -> dict:
    """Prepare one source into ``tmp`` (runs in a worker process): ``{key, ok, record | error}``."""
    spec = get_store_spec(domain)
    try:
        writer = ItemWriter(tmp, compression)
        record = spec.prepare_item(source, settings, writer)
        record = jsonable({**record, "key": source.key, "path": source.path, "stamps": stamps})
        record.setdefault("samples", 1)
        writer.finish(record)
        return {"key": source.key, "ok": True, "record": record}
    except DomainFMError as exc:
        reason = str(exc).splitlines()[0]
    except Exception as exc:  # an unreadable file may raise anything from its reader: named, the others go on
        reason = f"{source.path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
    remove_tree(Path(tmp))
    if source.path not in reason:
        reason = f"{source.path}: {reason}"
    return {"key": source.key, "ok": False, "error": reason, "path": source.path}


def _commit(out: Path, result: dict) -> dict:
    """Rename a finished item into ``items/`` (replacing an outdated one) and journal it."""
    key = result["key"]
    final = out / ITEMS / key
    if final.exists():
        remove_tree(final)
    os.replace(result["tmp"], final)
    append_journal(out, result["record"])
    return result["record"]


def _init_worker() -> None:
    import torch  # each worker process: one thread (the processes are the parallelism)

    torch.set_num_threads(1)


def _run(domain: str, settings: dict, todo: list, out: Path, workers: int, compression: str = COMPRESSION):
    """Yield each item's result (with its ``tmp`` folder) as it finishes, in this process or in a pool."""
    tmp = out / TMP
    tmp.mkdir(exist_ok=True)
    jobs = [(src, stamps, str(tmp / f"{src.key}.{os.getpid()}")) for src, stamps in todo]
    if workers <= 1:
        for src, stamps, folder in jobs:
            yield {**_prepare_one(domain, settings, src, stamps, folder, compression), "tmp": folder}
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        futures = {pool.submit(_prepare_one, domain, settings, s, st, f, compression): f for s, st, f in jobs}
        try:
            for fut in as_completed(futures):
                yield {**fut.result(), "tmp": futures[fut]}
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _manifest(domain: str, data: Path, settings: dict, records: dict, sources, failed, summary, old, codec) -> dict:
    order = [s.key for s in sources if s.key in records]
    order += [k for k in records if k not in set(order)]  # items of sources no longer listed are kept
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "domain": domain,
        "source": str(data.resolve()),
        "settings": settings,
        "compression": {"codec": "blosc", "name": codec, "shuffle": "byte"},
        "summary": summary,
        "complete": not failed and len(order) >= len(sources),
        "created": (old or {}).get("created") or _now(),
        "updated": _now(),
        "software": software_versions(),
        "samples": int(sum(int(records[k].get("samples", 1)) for k in order)),
        "items": [records[k] for k in order],
        "failed": [{"path": p, "error": e} for p, e in failed],
    }


def _write_manifest(out, domain, data, settings, records, sources, failed, old, compression=COMPRESSION) -> None:
    spec = get_store_spec(domain)
    summary = jsonable(spec.summarize(list(records.values()), settings)) if spec.summarize and records else {}
    manifest = _manifest(domain, data, settings, records, sources, failed, summary, old, compression)
    write_json_atomic(out / MANIFEST, manifest)
    (out / JOURNAL).unlink(missing_ok=True)


def default_workers(n_items: int) -> int:
    """Worker processes: the CPU count (of this process's affinity), at most one per item.

    Example:
        >>> default_workers(1)
        1
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, n_items))


def prepare(
    domain: str,
    data: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    options: dict | None = None,
    img_size: int | list[int] | None = None,
    progress: bool = True,
    compression: str = COMPRESSION,
) -> PrepareReport:
    """Prepare ``data`` (what ``domainfm pretrain --data`` reads for ``domain``) into the store ``out``.

    ``options`` are the domain's ``data.options`` (e.g. ``{"modality": "ct", "target_spacing": [1, 1, 1]}``);
    ``img_size`` is ``data.img_size`` (the model input the domain sizes samples to, where it does).
    ``compression``: ``lz4`` (the default: faster crops) or ``zstd`` (a smaller store), Blosc with shuffle.
    A second run prepares only sources that are new or changed, and with none says so and writes nothing.
    A source that cannot be read is named in ``report.failed``; the others are prepared.

    Example:
        >>> import tempfile
        >>> from domainfm.medical.synthetic import write_ct_nifti_folder
        >>> src = write_ct_nifti_folder(tempfile.mkdtemp(), n=2, shape=(12, 12, 8))[0].parent
        >>> out = Path(tempfile.mkdtemp()) / "store"
        >>> prepare("medical", src, out, workers=1, progress=False).prepared
        ['ct_0', 'ct_1']
        >>> prepare("medical", src, out, workers=1, progress=False).nothing_to_do
        True
    """
    started = time.perf_counter()
    data, out = Path(data), Path(out)
    spec = get_store_spec(domain)
    _check_out(out, data)
    compressor(compression)  # an unknown name is refused before any work
    section = {"path": str(data), "options": dict(options or {}), **({"img_size": img_size} if img_size else {})}
    cfg = load_config({"domain": domain, "data": section})
    settings, sources = spec.list_sources(cfg)
    settings, sources = jsonable(settings), _unique_sources(list(sources))
    if not sources:
        raise StoreError(data, f"holds nothing the {domain} domain can prepare")
    old = _existing(out, domain, settings)
    records = _known_records(out, old) if old is not None else {}
    todo, kept = _plan(sources, records)
    report = PrepareReport(str(out), kept=kept)
    pending = old is not None and (len(records) != len(old["items"]) or (out / JOURNAL).exists())
    if not todo and not pending:
        report.nothing_to_do = True
        _say(progress, report.summary())
        return report
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        create_root(out, domain)
        remove_tree(out / TMP)  # leftovers of an interrupted run: those items are redone whole
        _write_manifest(out, domain, data, settings, records, sources, [], old, compression)
        n = workers if workers is not None else default_workers(len(todo))
        for result in _run(domain, settings, todo, out, max(1, min(int(n), len(todo))), compression):
            if result["ok"]:
                records[result["key"]] = _commit(out, result)
                report.prepared.append(result["key"])
            else:
                report.failed.append((result["path"], result["error"]))
                _say(progress, f"failed: {result['error']}")
        _write_manifest(out, domain, data, settings, records, sources, report.failed, old, compression)
        remove_tree(out / TMP)
    report.seconds = round(time.perf_counter() - started, 3)
    _say(progress, report.summary())
    return report


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def manifest_text(path: str | Path) -> str:
    """The manifest of a store as indented JSON (for ``domainfm info``-like printing)."""
    return json.dumps(read_manifest(path), indent=2)


__all__ = ["prepare", "PrepareReport", "default_workers", "software_versions"]
