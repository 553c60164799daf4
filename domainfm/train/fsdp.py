"""FSDP2 (``train.strategy: fsdp``): the trained module sharded over the ranks of a ``torchrun`` job.

Each rank holds 1/world of every parameter, its gradient and its AdamW moments; a transformer block's
full weights exist only while that block runs (all-gathered before its forward and backward, freed
after). Every ``nn.ModuleList`` named ``blocks`` (the encoder's, a teacher's or momentum encoder's) gives
one FSDP unit per block; the root unit holds the rest (patch embedding, norms, the light MAE decoder,
whose last block computes the masked tokens only, heads, prototypes).
Buffers (e.g. the DINO centers) stay whole on every rank. On CUDA with bf16 the all-gathered weights
are bf16 and gradients are reduced in fp32; on CPU (gloo) everything stays fp32.

The caller's module is never turned into an FSDP module: :func:`shard_copy` shards a deep copy (the
original waits on the CPU) and :func:`copy_back` loads the trained, unsharded weights into the
original at the end, so the module can be used after training like after a DDP run. Functions set on
the original's instances close over the original, not the copy: the engine builds the optimizer
groups on the original and maps them by name (:func:`same_params`), and applies gradient
checkpointing to the copy. Checkpoints hold full tensors gathered by :func:`full_state` and
:func:`full_optimizer_state` (written by rank 0 in the same format as a DDP run), so
``domainfm.load`` reads them on one device and a run resumes from them under either strategy.

Example:
    >>> from torch import nn
    >>> m = nn.Module(); m.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)]); m.head = nn.Linear(2, 1)
    >>> [name for name, _ in block_units(m)]
    ['blocks.0', 'blocks.1']
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from domainfm.train.checkpoint import load_module_state

log = logging.getLogger("domainfm.train")


def block_units(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, block)`` for each element of an ``nn.ModuleList`` whose attribute name is ``blocks``
    (each becomes one FSDP unit), every block once even when several objectives share an encoder."""
    seen: set[int] = set()
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and name.rsplit(".", 1)[-1] == "blocks":
            for i, block in enumerate(child):
                if id(block) not in seen:
                    seen.add(id(block))
                    yield f"{name}.{i}", block


def shard_copy(module: nn.Module, device: torch.device, world_size: int, bf16: bool) -> nn.Module:
    """A deep copy of ``module`` sharded with FSDP2 over ``world_size`` ranks on ``device`` (one unit per
    block, then the root); ``module`` itself is moved to the CPU and left unsharded. Needs an initialised
    process group (``torchrun``; exercised by ``tests/core/test_fsdp.py``)."""
    module.to("cpu")
    sharded = copy.deepcopy(module)
    for m in sharded.modules():  # a checkpointed forward would run the original's block: the engine re-applies it
        if getattr(m, "_domainfm_ckpt", False):
            del m.forward
            m._domainfm_ckpt = False
    # the engine reads the objective's outputs (some are views) and never modifies them in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDP\w+\) returned a view tensor")
    mesh = init_device_mesh(device.type, (world_size,))
    on_cuda_bf16 = bf16 and device.type == "cuda"
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if on_cuda_bf16 else None
    kwargs = {"mesh": mesh, **({"mp_policy": mp} if mp is not None else {})}
    units = list(block_units(sharded))
    for _, block in units:
        fully_shard(block, **kwargs)
    fully_shard(sharded, **kwargs)
    log.info(
        "FSDP2: %d block units + root sharded over %d ranks on %s (%s)",
        len(units),
        world_size,
        device.type,
        "bf16 gather, fp32 reduce" if on_cuda_bf16 else "fp32",
    )
    return sharded


def same_params(groups: list[dict], original: nn.Module, copy_: nn.Module) -> list[dict]:
    """Optimizer ``groups`` built on ``original``, with each parameter replaced by the parameter of the same
    name in ``copy_`` (its sharded copy): a ``param_groups`` that closes over the original still groups
    the copy's parameters.

    Example:
        >>> a = nn.Linear(2, 2); b = copy.deepcopy(a)
        >>> [g["params"][0] is b.weight for g in same_params([{"params": [a.weight], "lr": 0.1}], a, b)]
        [True]
    """
    names = {id(p): n for n, p in original.named_parameters()}
    params = dict(copy_.named_parameters())
    return [{**g, "params": [params[names[id(p)]] for p in g["params"]]} for g in groups]


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded ``DTensor`` (a collective: every rank calls it), else ``t``.

    Example:
        >>> full_tensor(torch.ones(2))
        tensor([1., 1.])
    """
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(module: nn.Module, everywhere: bool = False) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with unsharded CPU tensors, one name per shared tensor, gathered one tensor at
    a time. Every rank must call it; the tensors are returned on rank 0 (on every rank with ``everywhere``)
    and ``{}`` elsewhere.

    Example:
        >>> m = nn.Module(); m.a = nn.Linear(2, 2); m.b = m.a   # one tensor under two names is kept once
        >>> sorted(full_state(m))
        ['a.bias', 'a.weight']
    """
    keep = everywhere or not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in module.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        whole = full_tensor(t.detach())
        if keep:
            out[name] = whole.cpu()
    return out


def _param_names(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in the order of ``optimizer.state_dict()``'s indices."""
    names = {id(p): n for n, p in module.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state with unsharded CPU tensors, indexed like ``optimizer.state_dict()`` (the format
    of a DDP run's checkpoint). Every rank must call it; rank 0 gets the state, the others ``{}``."""
    sd = get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not sd:
        return {}
    index = {name: i for i, name in enumerate(_param_names(module, optimizer))}
    return {
        "state": {index[name]: st for name, st in sd["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]],
    }


def load_full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """Load an unsharded optimizer state (indexed like ``optimizer.state_dict()``, read by every rank)
    into the sharded optimizer: each rank keeps its own shard."""
    names = _param_names(module, optimizer)
    by_name = {
        "state": {names[int(i)]: st for i, st in sd["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in sd["param_groups"]],
    }
    set_optimizer_state_dict(module, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def copy_full_into(dst: torch.Tensor, whole: torch.Tensor) -> None:
    """Copy a whole tensor into ``dst``; a sharded ``DTensor`` keeps only its own shard of it.

    Example:
        >>> dst = torch.zeros(2); copy_full_into(dst, torch.ones(2)); dst
        tensor([1., 1.])
    """
    with torch.no_grad():
        if isinstance(dst, DTensor):
            dst.copy_(distribute_tensor(whole.to(dst.device, dst.dtype), dst.device_mesh, dst.placements))
        else:
            dst.copy_(whole.to(dst.device, dst.dtype))


def copy_back(sharded: nn.Module, original: nn.Module, device: torch.device) -> None:
    """Load the trained weights of ``sharded`` (every rank calls it) into the unsharded ``original`` on
    ``device``, so the caller's module holds what the run trained."""
    load_module_state(original, full_state(sharded, everywhere=True))
    original.to(device)


def set_grad_sync(module: nn.Module, sync: bool) -> None:
    """Gradient accumulation: reduce-scatter gradients only on the last micro-step (FSDP2's ``no_sync``);
    a module that is not sharded is left alone.

    Example:
        >>> set_grad_sync(nn.Linear(2, 2), False)   # not an FSDP module: nothing to do
    """
    if isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(sync)


@contextlib.contextmanager
def gathered(module: nn.Module, enabled: bool = True):
    """The root unit's weights whole inside the block (every rank enters it), for calls other than
    ``forward`` (an online probe running the encoder); the blocks gather their own when they run.

    Example:
        >>> with gathered(nn.Linear(2, 2)):   # not an FSDP module: nothing to gather
        ...     pass
    """
    if not (enabled and isinstance(module, FSDPModule)):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()
