"""DDP set-up when launched by ``torchrun`` (NCCL on CUDA, gloo on CPU); a no-op otherwise.

Example:
    >>> ctx = DistContext.from_env()
    >>> ctx.world_size >= 1 and ctx.is_main in (True, False)
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device_type: str = "cpu") -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        created = False
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            if device_type == "cuda":
                torch.cuda.set_device(local)
            dist.init_process_group(backend=backend)
            created = True
        return cls(rank=rank, local_rank=local, world_size=world, initialized_here=created)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any_true(self, flag: bool, device) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def adamw_kwargs(device: torch.device | str) -> dict:
    """Keyword arguments for ``torch.optim.AdamW`` on ``device``: the fused kernel on CUDA and on CPU
    (one pass over each parameter instead of five elementwise ops; about 5x faster on a 2-core CPU for a
    ViT-S MAE), the default implementation elsewhere.

    Example:
        >>> adamw_kwargs("cpu"), adamw_kwargs("mps")
        ({'fused': True}, {})
    """
    return {"fused": True} if torch.device(device).type in ("cuda", "cpu") else {}
