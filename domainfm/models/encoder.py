"""The modality-agnostic ViT encoder over tokens, and its registry of sizes.

Example:
    >>> import torch
    >>> enc = build_encoder("vit-tiny", patch_embed="2d", in_chans=1, img_size=32, patch_size=8, depth=2)
    >>> enc(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 16, 192])
    >>> tokens, layers = enc(torch.zeros(2, 1, 32, 32), return_layers=[0, 1])
    >>> len(layers), enc.embed(torch.zeros(2, 1, 32, 32)).shape
    (2, torch.Size([2, 192]))
    >>> rebuilt = build_encoder(**enc.config)  # the config is self-describing
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from domainfm.config import MAX_SIDE
from domainfm.errors import ConfigError, DataError, did_you_mean
from domainfm.models.attention import Attention
from domainfm.models.patch_embed import _tuple, build_patch_embed, gather_tokens
from domainfm.models.pos_embed import resample_pos_embed, sincos_pos_embed
from domainfm.registry import get_encoder_arch, register_encoder


@register_encoder("vit-tiny")
def vit_tiny() -> dict:
    return {"embed_dim": 192, "depth": 12, "num_heads": 3}


@register_encoder("vit-small")
def vit_small() -> dict:
    return {"embed_dim": 384, "depth": 12, "num_heads": 6}


@register_encoder("vit-base")
def vit_base() -> dict:
    return {"embed_dim": 768, "depth": 12, "num_heads": 12}


@register_encoder("vit-large")
def vit_large() -> dict:
    return {"embed_dim": 1024, "depth": 24, "num_heads": 16}


def _checked_tokens(class_token: bool, num_registers: int, global_pool: str | None, pos_embed_type: str) -> str:
    """The pooling (default: the class token when there is one, else the patch mean), with the token and
    position options checked."""
    if num_registers < 0:
        raise ConfigError(f"model.num_registers must be >= 0, got {num_registers}")
    global_pool = global_pool or ("token" if class_token else "avg")
    check_global_pool(global_pool, class_token)
    if pos_embed_type not in ("sincos", "learned"):
        raise ConfigError(f"pos_embed_type must be 'sincos' or 'learned', got {pos_embed_type!r}")
    return global_pool


class ViTEncoder(nn.Module):
    """A ViT over the tokens of any patch embed (2D, 3D, wavelength), masking-aware.

    ``forward(x, wavelengths=None, ids_keep=None, return_layers=None)`` returns the final-normed
    patch tokens ``B x N x E`` (``N`` = kept tokens when ``ids_keep`` is given), plus the raw outputs
    of the blocks listed in ``return_layers`` when asked (patch tokens only).

    Prefix tokens: a class token (``class_token=True``) and ``num_registers`` register tokens
    ("Vision Transformers Need Registers") are prepended before the blocks and excluded from the
    patch tokens; ``forward_features`` returns them as ``prefix`` (and ``cls``). ``global_pool``
    sets ``pooled`` and ``embed``: ``"token"`` (the class token; the default when there is one), ``"avg"``
    (the patch-token mean) or ``"token+avg"`` (both concatenated, ``2 x embed_dim``: the linear-evaluation
    features of DINO, Caron et al. 2021). ``pooled_dim`` is the pooled vector's length.

    Example:
        >>> enc = ViTEncoder(in_chans=1, img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
        ...                  class_token=True, num_registers=2)
        >>> f = enc.forward_features(torch.zeros(3, 1, 16, 16))
        >>> f["tokens"].shape, f["prefix"].shape, f["pooled"].shape, enc.global_pool
        (torch.Size([3, 4, 32]), torch.Size([3, 3, 32]), torch.Size([3, 32]), 'token')
    """

    def __init__(
        self,
        name: str = "vit-tiny",
        patch_embed: str = "2d",
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        in_chans: int | None = 3,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        class_token: bool = False,
        num_registers: int = 0,
        global_pool: str | None = None,
        pos_embed_type: str = "sincos",
        init_values: float | None = None,
        qkv_bias: bool = True,
        wavelength_table: int = 0,
    ):
        super().__init__()
        problem = shape_problem(depth, embed_dim, num_heads, patch_size, img_size, in_chans)
        if problem:
            raise ConfigError(f"model.{problem}")
        global_pool = _checked_tokens(class_token, num_registers, global_pool, pos_embed_type)
        self._set_patch_embed(patch_embed, embed_dim, patch_size, in_chans, img_size, wavelength_table)
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.grid = tuple(s // p for s, p in zip(self.img_size, self.patch_embed.patch_size))
        self.embed_dim = embed_dim
        self.depth = depth
        self.pos_embed_type = pos_embed_type
        if pos_embed_type == "learned":  # imported absolute positions (patch tokens only; see weights.py)
            self.pos_embed = nn.Parameter(sincos_pos_embed(embed_dim, self.grid)[None])
        else:
            self.register_buffer("pos_embed", sincos_pos_embed(embed_dim, self.grid)[None], persistent=False)
        dpr = [float(v) for v in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=dpr[i],
                    init_values=init_values,
                    norm_layer=partial(nn.LayerNorm, eps=1e-6),
                    attn_layer=Attention,
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, num_registers, embed_dim)) if num_registers else None
        self.num_prefix_tokens = int(class_token) + num_registers
        self.global_pool = global_pool
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self.config = {
            "name": name,
            "patch_embed": patch_embed,
            "img_size": list(self.img_size),
            "patch_size": list(self.patch_embed.patch_size),
            "in_chans": self.patch_embed.in_chans,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "drop_path_rate": drop_path_rate,
            "class_token": class_token,
            "num_registers": num_registers,
            "global_pool": global_pool,
        }
        # keys added for imported weights are recorded only when they differ from the defaults,
        # so cards written before them (and their fingerprints) stay unchanged
        for key, value, default in (
            ("pos_embed_type", pos_embed_type, "sincos"),
            ("init_values", init_values, None),
            ("qkv_bias", qkv_bias, True),
            ("wavelength_table", wavelength_table, 0),
        ):
            if value != default:
                self.config[key] = value
        self.apply(self._init_weights)
        for prefix in (self.cls_token, self.reg_token):
            if prefix is not None:
                nn.init.normal_(prefix, std=1e-6)

    def _set_patch_embed(self, kind, embed_dim, patch_size, in_chans, img_size, wavelength_table) -> None:
        """The patch embed, the spatial dims and the image size, checked to fit each other."""
        try:
            self.patch_embed = build_patch_embed(
                kind, embed_dim, patch_size, in_chans, wavelength_table=wavelength_table
            )
            self.spatial_dims = self.patch_embed.spatial_dims
            self.img_size = _tuple(img_size, self.spatial_dims)
        except ValueError as exc:  # e.g. a 3-value patch size for a 2D patch embed
            raise ConfigError(
                f"model.patch_size {patch_size} / data.img_size {img_size} do not fit the {kind} patch embed "
                f"({exc}); give one value or one per spatial axis"
            ) from None
        if any(s % p for s, p in zip(self.img_size, self.patch_embed.patch_size)):
            raise ConfigError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_embed.patch_size}")

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def pos_embed_for(self, grid: tuple[int, ...]) -> torch.Tensor:
        """Positional embedding for ``grid`` (the training grid's, interpolated when it differs)."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        if self.pos_embed_type == "learned":  # a trained parameter: resampled on every call (grads flow)
            return resample_pos_embed(self.pos_embed[0], self.grid, tuple(grid))[None]
        cached = self._pos_cache.get(tuple(grid))
        if cached is None or cached.device != self.pos_embed.device:
            cached = resample_pos_embed(self.pos_embed[0], self.grid, tuple(grid))[None]
            self._pos_cache[tuple(grid)] = cached
        return cached

    def grid_size(self, shape: Sequence[int]) -> tuple[int, ...]:
        return self.patch_embed.grid_size(shape)

    def tokenize(
        self,
        x: torch.Tensor,
        wavelengths=None,
        token_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Patch tokens with positions added, and the token grid.

        ``token_mask`` (``B x N`` bool) replaces the embeddings of masked patches by ``mask_token``
        (``E`` or ``1 x 1 x E``) before positions are added, as iBOT/BEiT-style objectives need.
        """
        grid = self.grid_size(x.shape)
        tokens = self.patch_embed(x, wavelengths=wavelengths)
        if token_mask is not None:
            if mask_token is None:
                raise ValueError("token_mask needs a mask_token")
            tokens = torch.where(token_mask[..., None], mask_token.reshape(1, 1, -1).to(tokens.dtype), tokens)
        return tokens + self.pos_embed_for(grid).to(tokens.dtype), grid

    def _with_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        prefix = [
            t.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
            for t in (self.cls_token, self.reg_token)
            if t is not None
        ]
        return torch.cat([*prefix, tokens], dim=1) if prefix else tokens

    def forward_tokens(
        self,
        x: torch.Tensor,
        wavelengths=None,
        ids_keep: torch.Tensor | None = None,
        return_layers: Sequence[int] | None = None,
        token_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """All final-normed tokens, prefix first (``B x (P + N) x E``), and the chosen blocks' patch tokens."""
        if ids_keep is not None and token_mask is None and hasattr(self.patch_embed, "forward_kept"):
            # embed only the kept patches (MAE keeps a quarter), then add their positions
            tokens = self.patch_embed.forward_kept(x, ids_keep, wavelengths=wavelengths)
            pos = self.pos_embed_for(self.grid_size(x.shape)).to(tokens.dtype)
            tokens = tokens + gather_tokens(pos.expand(x.shape[0], -1, -1), ids_keep)
        else:
            tokens, _ = self.tokenize(x, wavelengths, token_mask=token_mask, mask_token=mask_token)
            if ids_keep is not None:
                tokens = gather_tokens(tokens, ids_keep)
        tokens = self._with_prefix(tokens)
        wanted = set(return_layers or ())
        bad = [i for i in wanted if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"return_layers {sorted(bad)} out of range for an encoder of depth {self.depth}")
        layers = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in wanted:
                layers.append(tokens[:, self.num_prefix_tokens :])
        return self.norm(tokens), layers

    def forward(
        self,
        x: torch.Tensor,
        wavelengths=None,
        ids_keep: torch.Tensor | None = None,
        return_layers: Sequence[int] | None = None,
    ):
        tokens, layers = self.forward_tokens(x, wavelengths, ids_keep=ids_keep, return_layers=return_layers)
        tokens = tokens[:, self.num_prefix_tokens :]
        if return_layers is None:
            return tokens
        return tokens, layers

    @property
    def pooled_dim(self) -> int:
        """Length of the pooled vector (``embed``, ``forward_features()["pooled"]``)."""
        return 2 * self.embed_dim if self.global_pool == "token+avg" else self.embed_dim

    def set_global_pool(self, global_pool: str) -> None:
        """Pool with ``global_pool`` from now on (``"token"``, ``"avg"`` or ``"token+avg"``), checked.

        Example:
            >>> enc = ViTEncoder(in_chans=1, img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
            ...                  class_token=True)
            >>> enc.set_global_pool("token+avg"); enc.embed(torch.zeros(2, 1, 16, 16)).shape, enc.pooled_dim
            (torch.Size([2, 64]), 64)
        """
        check_global_pool(global_pool, self.cls_token is not None)
        self.global_pool = global_pool
        self.config["global_pool"] = global_pool

    def pool(self, all_tokens: torch.Tensor) -> torch.Tensor:
        """One vector per image from :meth:`forward_tokens` output (see ``global_pool``)."""
        if self.global_pool == "token":
            return all_tokens[:, 0]
        mean = all_tokens[:, self.num_prefix_tokens :].mean(1)
        if self.global_pool == "token+avg":
            return torch.cat([all_tokens[:, 0], mean], dim=1)
        return mean

    def forward_features(
        self,
        x: torch.Tensor,
        wavelengths=None,
        layers: Sequence[int] | None = None,
        token_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> dict:
        """Everything a head may need: final patch tokens, prefix tokens, chosen intermediate layers, grid,
        pooled vector (see ``global_pool``)."""
        all_tokens, inter = self.forward_tokens(
            x, wavelengths=wavelengths, return_layers=list(layers or []), token_mask=token_mask, mask_token=mask_token
        )
        p = self.num_prefix_tokens
        feats = {
            "tokens": all_tokens[:, p:],
            "prefix": all_tokens[:, :p],
            "layers": inter,
            "grid": self.grid_size(x.shape),
            "pooled": self.pool(all_tokens),
            "image": x,
            "wavelengths": wavelengths,
        }
        if self.cls_token is not None:
            feats["cls"] = all_tokens[:, 0]
        return feats

    def embed(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        """One vector per image (``B x E``): the class token, or the mean of the final patch tokens."""
        return self.pool(self.forward_tokens(x, wavelengths=wavelengths)[0])

    def check_input(self, x: torch.Tensor, path=None) -> None:
        """Raise a clear error if ``x`` does not fit this encoder (dims, channels)."""
        if x.ndim != self.spatial_dims + 2:
            raise DataError(
                path,
                f"the model takes {self.spatial_dims}D inputs "
                f"(B x C x {'D x ' if self.spatial_dims == 3 else ''}H x W) "
                f"but got shape {tuple(x.shape)}",
            )
        if self.patch_embed.in_chans is not None and x.shape[1] != self.patch_embed.in_chans:
            raise DataError(
                path, f"the model was trained on {self.patch_embed.in_chans} channels, the data has {x.shape[1]}"
            )


GLOBAL_POOLS = ("token", "avg", "token+avg")


#: bounds of an encoder's shape: past them a config or a tampered card would reach the allocator
MAX_DEPTH, MAX_EMBED_DIM = 1024, 65536


def _ints(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def shape_problem(depth, embed_dim, num_heads, patch_size, img_size, in_chans=None) -> str | None:
    """What is wrong with an encoder's shape (``"depth must be ..."``, the key first), or ``None``: checked
    before anything is allocated, for a config (``model.*``) and for a checkpoint card (``encoder.*``).

    Example:
        >>> shape_problem(12, 192, 3, 16, 224), shape_problem(10**12, 192, 3, 16, 224)
        (None, 'depth must be an integer in [1, 1024], got 1000000000000')
    """

    def bad_int(v, lo, hi) -> bool:
        return isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi

    checks = (
        ("depth", depth, 1, MAX_DEPTH),
        ("embed_dim", embed_dim, 1, MAX_EMBED_DIM),
        ("num_heads", num_heads, 1, MAX_EMBED_DIM),
    )
    for key, value, lo, hi in checks:
        if bad_int(value, lo, hi):
            return f"{key} must be an integer in [{lo}, {hi}], got {value!r}"
    if in_chans is not None and bad_int(in_chans, 1, 4096):
        return f"in_chans must be an integer in [1, 4096], got {in_chans!r}"
    for key, value in (("patch_size", patch_size), ("img_size", img_size)):
        if any(bad_int(v, 1, MAX_SIDE) for v in _ints(value)):
            return f"{key} must be integers in [1, {MAX_SIDE}], got {value!r}"
    return None


def check_global_pool(global_pool: str, class_token: bool) -> None:
    """Raise a one-line ConfigError unless ``global_pool`` is one of :data:`GLOBAL_POOLS` and fits the encoder.

    Example:
        >>> try:
        ...     check_global_pool("token+avg", class_token=False)
        ... except ConfigError as e:
        ...     print(str(e)[:60])
        model.global_pool='token+avg' needs a class token (model.cla
    """
    if global_pool not in GLOBAL_POOLS:
        raise ConfigError(
            f"model.global_pool must be one of {', '.join(GLOBAL_POOLS)}; got {global_pool!r}"
            + did_you_mean(global_pool, GLOBAL_POOLS)
        )
    if "token" in global_pool and not class_token:
        raise ConfigError(
            f"model.global_pool={global_pool!r} needs a class token (model.class_token: true); "
            "the encoder has none: use 'avg'"
        )


def build_encoder(
    name: str = "vit-tiny",
    patch_embed: str = "2d",
    img_size=224,
    patch_size=16,
    in_chans: int | None = 3,
    depth: int | None = None,
    embed_dim: int | None = None,
    num_heads: int | None = None,
    **kwargs,
) -> ViTEncoder:
    """Build a registered encoder size with a patch embed; size overrides (depth, embed_dim, heads) allowed.

    Example:
        >>> enc = build_encoder("vit-small", patch_embed="3d", img_size=(32, 64, 64), patch_size=(4, 16, 16),
        ...                     in_chans=1)
        >>> enc.grid
        (8, 4, 4)
    """
    arch = dict(get_encoder_arch(name)())
    for key, value in (("depth", depth), ("embed_dim", embed_dim), ("num_heads", num_heads)):
        if value is not None:
            arch[key] = value
    return ViTEncoder(
        name=name,
        patch_embed=patch_embed,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        **arch,
        **kwargs,
    )
