"""The trainer state a checkpoint carries besides the weights: random number generators and optimiser.

Both are flattened into safetensors tensors plus JSON metadata (nothing pickled) and read back into the
live objects, so that a resumed run continues exactly.

Example:
    >>> tensors, meta = rng_state(); set_rng_state(tensors, meta)
    >>> sorted(meta)
    ['numpy', 'python']
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> tuple[dict, dict]:
    """The torch (CPU and every CUDA device), NumPy and Python generator states as (tensors, JSON metadata)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict) -> None:
    """Restore what :func:`rng_state` recorded (CUDA states only on as many devices as were recorded)."""
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if states and len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    if "numpy" in meta:
        n = meta["numpy"]
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "python" in meta:
        p = meta["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))


def optimizer_state(sd: dict) -> tuple[dict, dict]:
    """Flatten ``optimizer.state_dict()`` into safetensors tensors and JSON metadata.

    Example:
        >>> opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=0.1)
        >>> tensors, meta = optimizer_state(opt.state_dict())
        >>> optimizer_state_dict(tensors, meta)["param_groups"][0]["betas"]
        (0.9, 0.999)
    """
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_dict(tensors: dict, meta: dict) -> dict:
    """The ``optimizer.state_dict()`` that :func:`optimizer_state` flattened."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}
