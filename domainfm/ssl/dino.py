"""Self-distillation (DINO / iBOT / DINOv2 family) for any patch embed: 2D, 3D or wavelength-conditioned.

A student (the encoder being trained, plus a DINO head) matches an EMA teacher's distribution over
weight-normalised prototypes across multi-crop views: the teacher sees the ``n_global`` global crops,
the student every crop (DINO). Optional parts: iBOT's masked-patch loss (the student's global crops
have patches replaced by a mask token owned by this objective and must predict the teacher's patch
distributions), KoLeo spreading of the student's global features and Sinkhorn-Knopp instead of the
EMA center (DINOv2). Teacher and centers are in ``state_dict`` (hence in checkpoints), and so is
the step the schedules read, so a resumed run continues exactly. Under DDP the teacher is the EMA of
the synced student and the centers / Sinkhorn sums / collapse statistics are all-reduced.

Example:
    >>> import torch
    >>> from domainfm.models import build_encoder
    >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)
    >>> dino = DINO(enc, prototypes=64, hidden_dim=64, bottleneck_dim=16, ibot_weight=1.0, koleo_weight=0.1)
    >>> views = [torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16), torch.rand(4, 1, 8, 8)]
    >>> out = dino({"views": views})
    >>> sorted(k for k in out if k.endswith("loss")), bool(torch.isfinite(out["loss"]))
    (['dino_loss', 'ibot_loss', 'koleo_loss', 'loss'], True)
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from domainfm.errors import ConfigError, DomainFMError, did_you_mean
from domainfm.ramps import cosine_ramp, linear_ramp
from domainfm.ssl.mae import MAE
from domainfm.ssl.monitor import teacher_collapse_metrics

log = logging.getLogger("domainfm.ssl")


class CollapseError(DomainFMError):
    """Self-distillation collapsed (the teacher's prototype assignment no longer depends on the input)."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity in a single process)."""
    if _distributed():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if _distributed():
        x = x.clone()
        dist.all_reduce(x)
    return x


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> cosine logits against weight-normalised prototypes.

    The prototypes are normalised in ``forward`` (weight normalisation with the gain fixed to 1, as
    DINO's ``norm_last_layer``), so logits lie in [-1, 1] before the temperature. ``batch_norm`` adds
    BatchNorm after the hidden layers (DINO's ``use_bn``): it removes the component all images share,
    which helps short runs on homogeneous data (e.g. chest X-rays) leave the uniform start.

    Example:
        >>> head = DINOHead(32, prototypes=10, hidden_dim=64, bottleneck_dim=16)
        >>> out = head(torch.randn(5, 32))
        >>> out.shape, bool(out.abs().max() <= 1.0 + 1e-5)
        (torch.Size([5, 10]), True)
    """

    def __init__(
        self,
        in_dim: int,
        prototypes: int = 4096,
        hidden_dim: int = 1024,
        bottleneck_dim: int = 256,
        layers: int = 3,
        batch_norm: bool = False,
    ):
        super().__init__()
        if prototypes < 2:
            raise ConfigError(f"objective.prototypes must be >= 2, got {prototypes}")
        if layers < 1:
            raise ConfigError(f"objective.head_layers must be >= 1, got {layers}")
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(dim, hidden_dim), *([nn.BatchNorm1d(hidden_dim)] if batch_norm else []), nn.GELU()]
            dim = hidden_dim
        mods.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*mods)
        self.prototypes = nn.Parameter(torch.empty(prototypes, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x).float(), dim=-1, eps=1e-6)
        return z @ F.normalize(self.prototypes.float(), dim=-1, eps=1e-6).t()


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """Teacher targets with equal prototype usage over the (global) batch (SwAV / DINOv2), ``B x K``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(64, 8) + 0.3 * torch.arange(8.0)  # softmax would favour the last prototypes
        >>> q = sinkhorn_knopp(x, 0.5)
        >>> bool(torch.allclose(q.sum(1), torch.ones(64), atol=1e-4))
        True
        >>> bool(q.sum(0).std() < 0.2 * torch.softmax(x / 0.5, dim=1).sum(0).std())
        True
    """
    logits = logits.float()
    peak = logits.max()
    if _distributed():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    q = torch.exp((logits - peak) / temp).t()  # K x B
    n = all_reduce_sum(torch.tensor(float(q.shape[1]), device=q.device))
    k = q.shape[0]
    q /= all_reduce_sum(q.sum()).clamp_min(1e-30)
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min(1e-30)
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp_min(1e-30)
        q /= n
    return (q * n).t()


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate (DINOv2): ``-mean log(distance to the nearest neighbour)``.

    Example:
        >>> spread, bunched = koleo_loss(torch.randn(32, 8)), koleo_loss(0.01 * torch.randn(32, 8) + 1)
        >>> bool(spread < bunched)
        True
    """
    x = F.normalize(x.float(), dim=-1, eps=eps)
    dots = x @ x.t()
    dots.fill_diagonal_(-2.0)
    nearest = dots.argmax(dim=1)
    dist_nn = (x - x[nearest]).norm(dim=-1)
    return -torch.log(dist_nn + eps).mean()


def ibot_masks(batch: int, n_tokens: int, ratio: tuple[float, float], device) -> torch.Tensor:
    """``B x N`` bool: each sample masks a uniform ``ratio`` share of its patches (at least one)."""
    r = ratio[0] + (ratio[1] - ratio[0]) * torch.rand(batch, 1, device=device)
    n_mask = (r * n_tokens).round().clamp(1, n_tokens)
    ranks = torch.rand(batch, n_tokens, device=device).argsort(dim=1).argsort(dim=1)
    return ranks < n_mask


def cross_view_entropy(t_probs, s_logp) -> torch.Tensor:
    """Mean cross-entropy of every student crop against every teacher crop but its own.

    Example:
        >>> p = torch.full((2, 4), 0.25)
        >>> round(float(cross_view_entropy([p, p], [p.log(), p.log()])), 4)   # log 4
        1.3863
    """
    total, terms = 0.0, 0
    for ti, tp in enumerate(t_probs):
        for si, sl in enumerate(s_logp):
            if si == ti:  # a crop is never its own target
                continue
            total = total + (-(tp * sl).sum(dim=-1)).mean()
            terms += 1
    return total / max(terms, 1)


@dataclass
class MultiCropOptions:
    """``objective.*`` of an objective on multi-crop views (``views="multicrop"``): crop counts, scales and the
    local crop size (pixels/voxels; ``None``: 96/224 of ``data.img_size``), read by the domain's ``multicrop``."""

    global_crops: int = 2
    local_crops: int = 6
    global_crop_scale: list[float] = field(default_factory=lambda: [0.32, 1.0])
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])
    local_crop_size: int | list[int] | None = None


@dataclass
class DINOOptions(MultiCropOptions):
    """``objective.*`` of ``dino`` (and ``mae+dino``): head, teacher, centering, extra losses, collapse check."""

    dino_weight: float = 1.0
    prototypes: int = 4096  # weight-normalised prototypes of the DINO head
    head_hidden_dim: int = 1024
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    head_bn: bool = False  # BatchNorm in the DINO head's MLP (helps short runs on homogeneous images)
    teacher_momentum: float = 0.996  # cosine schedule from this to 1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_steps: int = 0
    student_temp: float = 0.1
    centering: str = "center"  # center (EMA center) | sinkhorn (Sinkhorn-Knopp)
    center_momentum: float = 0.9
    koleo_weight: float = 0.0
    ibot_weight: float = 0.0  # iBOT masked-patch loss
    ibot_mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])
    collapse_threshold: float = 0.01  # teacher mutual information / log(prototypes) below this = collapsed
    collapse_patience: int = 50  # consecutive collapsed steps after the check starts
    collapse_check_after: int | None = None  # None: after teacher_temp_warmup_steps and 10% of the steps
    stop_on_collapse: bool = True


class DINO(nn.Module):
    """DINO / iBOT / DINOv2-style self-distillation around ``encoder`` (the student)."""

    def __init__(
        self,
        encoder: nn.Module,
        prototypes: int = 4096,
        hidden_dim: int = 1024,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        head_bn: bool = False,
        n_global: int = 2,
        teacher_momentum: float = 0.996,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup_steps: int = 0,
        student_temp: float = 0.1,
        centering: str = "center",
        center_momentum: float = 0.9,
        koleo_weight: float = 0.0,
        ibot_weight: float = 0.0,
        ibot_mask_ratio=(0.1, 0.5),
        dino_weight: float = 1.0,
        collapse_threshold: float = 0.01,
        collapse_patience: int = 50,
        collapse_check_after: int | None = None,
        stop_on_collapse: bool = True,
    ):
        super().__init__()
        if centering not in ("center", "sinkhorn"):
            raise ConfigError(
                f"objective.centering must be center or sinkhorn, got {centering!r}"
                + did_you_mean(centering, ("center", "sinkhorn"))
            )
        if n_global < 1:
            raise ConfigError(
                f"objective.global_crops must be >= 1 (the teacher sees the global crops), got {n_global}"
            )
        lo, hi = (list(ibot_mask_ratio) + [None, None])[:2]
        if lo is None or hi is None or not 0 < lo <= hi < 1:
            raise ConfigError(
                f"objective.ibot_mask_ratio must be [low, high] with 0 < low <= high < 1, got {ibot_mask_ratio}"
            )
        for key, value in (
            ("teacher_temp", teacher_temp),
            ("warmup_teacher_temp", warmup_teacher_temp),
            ("student_temp", student_temp),
        ):
            if not value > 0:
                raise ConfigError(f"objective.{key} must be > 0, got {value}")
        if not 0 <= teacher_momentum <= 1 or not 0 <= center_momentum < 1:
            raise ConfigError("objective.teacher_momentum must be in [0, 1] and objective.center_momentum in [0, 1)")
        self.encoder = encoder
        self.head = DINOHead(encoder.embed_dim, prototypes, hidden_dim, bottleneck_dim, head_layers, head_bn)
        self.teacher_encoder = copy.deepcopy(encoder)
        self.teacher_head = copy.deepcopy(self.head)
        for p in list(self.teacher_encoder.parameters()) + list(self.teacher_head.parameters()):
            p.requires_grad_(False)
        self.mask_token = nn.Parameter(torch.zeros(encoder.embed_dim)) if ibot_weight > 0 else None
        self.n_global = n_global
        self.base_momentum, self.momentum = teacher_momentum, teacher_momentum
        self.teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.teacher_temp_warmup_steps, self.student_temp = teacher_temp_warmup_steps, student_temp
        self.centering, self.center_momentum = centering, center_momentum
        self.koleo_weight, self.ibot_weight, self.dino_weight = koleo_weight, ibot_weight, dino_weight
        self.ibot_mask_ratio = (float(lo), float(hi))
        self.collapse_threshold, self.collapse_patience = collapse_threshold, collapse_patience
        self.collapse_check_after, self.stop_on_collapse = collapse_check_after, stop_on_collapse
        self.register_buffer("center", torch.zeros(1, prototypes))
        self.register_buffer("patch_center", torch.zeros(1, prototypes))
        # schedule position and collapse run-length: in the state_dict so that resume is exact
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("collapsed_steps", torch.zeros((), dtype=torch.long))
        self._last_mi: torch.Tensor | None = None

    # ---- schedules -----------------------------------------------------------------------------
    def current_teacher_temp(self) -> float:
        """Linear warmup from ``warmup_teacher_temp`` to ``teacher_temp`` over ``teacher_temp_warmup_steps``."""
        return linear_ramp(int(self.step), self.teacher_temp_warmup_steps, self.warmup_teacher_temp, self.teacher_temp)

    # ---- targets -------------------------------------------------------------------------------
    @torch.no_grad()
    def _teacher_targets(self, logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(logits, temp)
        return F.softmax((logits - center) / temp, dim=-1)

    @torch.no_grad()
    def _update_center(self, name: str, logits: torch.Tensor) -> None:
        if self.centering != "center":
            return
        mean = all_reduce_mean(logits.float().mean(dim=0, keepdim=True))
        buf = getattr(self, name)
        buf.mul_(self.center_momentum).add_(mean, alpha=1 - self.center_momentum)

    # ---- losses --------------------------------------------------------------------------------
    def _ibot_term(self, s_feats: list[dict], masks: list[torch.Tensor], t_patch_logits, temp: float) -> torch.Tensor:
        """iBOT: the student's masked patch tokens predict the teacher's (each image weighted equally);
        updates the patch centre."""
        s_patch = torch.cat([f["tokens"] for f in s_feats])
        m = torch.cat(masks)
        t_patch = self._teacher_targets(t_patch_logits[m], self.patch_center, temp)
        s_patch_logp = F.log_softmax(self.head(s_patch[m]) / self.student_temp, dim=-1)
        per_token = -(t_patch * s_patch_logp).sum(dim=-1)
        weight = (1.0 / m.sum(dim=1).clamp_min(1).float())[:, None].expand_as(m)[m]
        ibot = (per_token * weight).sum() / m.shape[0]
        self._update_center("patch_center", t_patch_logits.flatten(0, -2))
        return ibot

    @torch.no_grad()
    def _teacher_stats(self, t_probs, temp: float) -> dict:
        """Teacher entropy and mutual information (the collapse signal), averaged over ranks."""
        probs = torch.cat(t_probs)
        ent = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()
        stats = teacher_collapse_metrics(all_reduce_mean(probs.mean(0)), all_reduce_mean(ent))
        self._last_mi = stats["teacher_mi"]
        return {**stats, "teacher_temp": torch.tensor(temp)}

    def dino_terms(self, views: list[torch.Tensor], wavelengths=None) -> dict:
        """Losses and statistics of one multi-crop batch (the ``dino`` part of ``mae+dino`` too)."""
        if not views or len(views) < self.n_global or len(views) < 2:
            raise ValueError(
                f"dino pretraining needs batch['views'] with {self.n_global} global crops and at "
                f"least 2 crops in all (got {len(views or [])}); wrap the data in a MultiCropDataset"
            )
        globals_, locals_ = views[: self.n_global], views[self.n_global :]
        b = globals_[0].shape[0]
        temp = self.current_teacher_temp()
        use_ibot = self.ibot_weight > 0
        with torch.no_grad():
            t_feats = [self.teacher_encoder.forward_features(v, wavelengths=wavelengths) for v in globals_]
            t_logits = self.teacher_head(torch.cat([f["pooled"] for f in t_feats])).float()
            t_probs = self._teacher_targets(t_logits, self.center, temp).chunk(self.n_global)
            if use_ibot:
                tokens = torch.cat([f["tokens"] for f in t_feats])
                t_patch_logits = self.teacher_head(tokens.flatten(0, 1)).float().unflatten(0, tokens.shape[:2])
        masks = None
        if use_ibot:
            n = t_feats[0]["tokens"].shape[1]
            masks = [ibot_masks(b, n, self.ibot_mask_ratio, v.device) for v in globals_]
        s_feats = [
            self.encoder.forward_features(
                v, wavelengths=wavelengths, token_mask=None if masks is None else masks[i], mask_token=self.mask_token
            )
            for i, v in enumerate(globals_)
        ]
        s_pooled = [f["pooled"] for f in s_feats] + [self.encoder.embed(v, wavelengths=wavelengths) for v in locals_]
        s_logp = F.log_softmax(self.head(torch.cat(s_pooled)) / self.student_temp, dim=-1).chunk(len(views))
        dino = cross_view_entropy(t_probs, s_logp)
        loss = self.dino_weight * dino
        out = {"dino_loss": dino.detach()}
        if use_ibot:
            ibot = self._ibot_term(s_feats, masks, t_patch_logits, temp)
            loss = loss + self.ibot_weight * ibot
            out["ibot_loss"] = ibot.detach()
        if self.koleo_weight > 0:
            koleo = sum(koleo_loss(p) for p in s_pooled[: self.n_global]) / self.n_global
            loss = loss + self.koleo_weight * koleo
            out["koleo_loss"] = koleo.detach()
        out.update(self._teacher_stats(t_probs, temp))
        self._update_center("center", t_logits)
        out["loss"] = loss
        out["embeddings"] = s_pooled[0].detach()
        return out

    def forward(self, batch: dict) -> dict:
        return self.dino_terms(batch.get("views"), batch.get("wavelengths"))

    # ---- after each optimizer step -------------------------------------------------------------
    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA teacher update (cosine momentum from ``teacher_momentum`` to 1), then the collapse check."""
        self.momentum = cosine_ramp(step, total_steps, self.base_momentum, 1.0)
        for online, target in ((self.encoder, self.teacher_encoder), (self.head, self.teacher_head)):
            for p, q in zip(online.parameters(), target.parameters()):
                q.mul_(self.momentum).add_(p.detach(), alpha=1.0 - self.momentum)
        self.step.fill_(step)
        self._check_collapse(step, total_steps)

    def learning_verdict(self, outputs: dict) -> tuple[bool, str] | None:
        """``(not learning, why)`` from the teacher's statistics of the last step, for the engine's check
        past warmup (:mod:`domainfm.train.learning`); ``None`` before any step.

        The DINO loss itself can rise while the run learns (the teacher temperature warms up), so the
        signal is the teacher: its assignment carrying (almost) no information about the input, most often
        a uniform prototype distribution (entropy at log K) from the first step on.
        """
        ent, mi = outputs.get("teacher_entropy"), outputs.get("teacher_mi")
        if ent is None or mi is None:
            return None
        log_k = math.log(self.center.shape[1])
        if float(mi) >= self.collapse_threshold * log_k:
            return False, ""
        if float(ent) > 0.95 * log_k:
            cause = (
                f"The teacher's prototype distribution is uniform (entropy {float(ent):.3g} of log K {log_k:.3g}, "
                f"teacher_mi {float(mi):.2g}): the head gives every input the same output."
            )
        else:
            cause = f"The teacher's assignment carries no information about the input (teacher_mi {float(mi):.2g})."
        return True, (
            f"{cause} Leave the objective's settings to the recipe (unset objective.prototypes, head_bn, "
            "teacher_temp), or set objective.head_bn=true, fewer objective.prototypes (256), "
            "objective.teacher_temp=0.05 or a higher train.lr."
        )

    def _check_collapse(self, step: int, total_steps: int) -> None:
        if self._last_mi is None:
            return
        start = self.collapse_check_after
        if start is None:
            start = max(self.teacher_temp_warmup_steps, total_steps // 10)
        log_k = math.log(self.center.shape[1])
        collapsed = step > start and float(self._last_mi) < self.collapse_threshold * log_k
        self.collapsed_steps.fill_(int(self.collapsed_steps) + 1 if collapsed else 0)
        if int(self.collapsed_steps) >= self.collapse_patience:
            message = (
                f"self-distillation collapsed: the teacher's assignment has carried < "
                f"{self.collapse_threshold:g} x log(prototypes) nats about the input for "
                f"{int(self.collapsed_steps)} steps up to step {step} (teacher_mi {float(self._last_mi):.3g}); "
                f"try a lower objective.teacher_temp, more objective.teacher_temp_warmup_steps, "
                f"objective.centering=sinkhorn, or a lower train.lr "
                f"(objective.stop_on_collapse=false keeps going)"
            )
            if self.stop_on_collapse:
                raise CollapseError(message)
            if int(self.collapsed_steps) == self.collapse_patience:
                log.warning(message)


class MAEDINO(nn.Module):
    """``loss = mae_weight * MAE(first global crop) + dino_weight * DINO(all crops)`` on one shared encoder.

    Example:
        >>> import torch
        >>> from domainfm.models import build_encoder
        >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)
        >>> obj = MAEDINO(enc, mae_kwargs={"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
        ...               dino_kwargs={"prototypes": 32, "hidden_dim": 32, "bottleneck_dim": 16})
        >>> out = obj({"image": torch.rand(4, 1, 16, 16), "views": [torch.rand(4, 1, 16, 16)] * 2})
        >>> sorted(k for k in out if k.endswith("loss"))
        ['dino_loss', 'loss', 'mae_loss']
    """

    def __init__(
        self,
        encoder: nn.Module,
        mae_weight: float = 1.0,
        mae_kwargs: dict | None = None,
        dino_kwargs: dict | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.mae = MAE(encoder, **(mae_kwargs or {}))
        self.dino = DINO(encoder, **(dino_kwargs or {}))
        self.mae_weight = mae_weight

    def forward(self, batch: dict) -> dict:
        out = self.dino.dino_terms(batch.get("views"), batch.get("wavelengths"))
        mae_out = self.mae(batch, image=batch["views"][0])
        out["loss"] = out["loss"] + self.mae_weight * mae_out["loss"]
        out["mae_loss"] = mae_out["loss"].detach()
        return out

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.dino.on_step_end(step, total_steps)

    def learning_verdict(self, outputs: dict) -> tuple[bool, str] | None:
        return self.dino.learning_verdict(outputs)

    def reconstruct(self, batch: dict):
        return self.mae.reconstruct(batch)
