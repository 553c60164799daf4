"""Archive-scale data: prepare once into a chunked zarr store, then stream random crops from it.

``prepare(domain, data, out)`` runs the domain's deterministic preprocessing once per source file
(processes in parallel, resumable, provenance recorded) and ``open_store(out)`` reads random crops
by partial chunk reads. zarr is the ``store`` extra (``pip install 'domainfm[store]'``); it is imported
only when a store is written or read.

Example:
    >>> from domainfm.store import is_store, open_store, prepare
    >>> is_store("scans/")
    False
"""

from domainfm.store.build import PrepareReport, prepare
from domainfm.store.dataset import StoreDataset, StoreStream, open_store, shard_indices
from domainfm.store.layout import StoreError, is_store, read_manifest
from domainfm.store.spec import Source, StoreSpec, get_store_spec, register_store_preparer

__all__ = [
    "prepare",
    "open_store",
    "is_store",
    "read_manifest",
    "register_store_preparer",
    "get_store_spec",
    "Source",
    "StoreSpec",
    "StoreDataset",
    "StoreStream",
    "StoreError",
    "PrepareReport",
    "shard_indices",
]
