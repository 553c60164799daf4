"""A loaded model that carries its card and the exact preprocessing: :class:`FoundationModel`,
:func:`load`, and the checks a card on disk passes before anything is built (:func:`check_card`). The card
itself (:class:`~domainfm.card.Card`, :func:`build_card`) lives in :mod:`domainfm.card`.

Example:
    >>> import torch
    >>> from domainfm.models import build_encoder
    >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    >>> model = FoundationModel(enc, {"domain": "synthetic", "preprocessing": {"spatial_dims": 2}})
    >>> model.embed(torch.zeros(2, 1, 16, 16)).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from domainfm.card import Card, build_card
from domainfm.display import batched_preprocessor, model_summary, model_summary_html
from domainfm.errors import CheckpointError, ConfigError, DataError, unknown_choice
from domainfm.models.encoder import build_encoder, shape_problem
from domainfm.models.lora import apply_lora, merge_lora
from domainfm.registry import get_domain, list_domains
from domainfm.runconfig import config_from_card
from domainfm.train.checkpoint import load_module_state, load_tensors, resolve_checkpoint

__all__ = ["FoundationModel", "load", "check_card", "card_weights_mismatch", "build_card", "Card"]


class FoundationModel(nn.Module):
    """A loaded encoder (+ optional head) that carries its card and the exact preprocessing.

    Example:
        >>> import numpy as np
        >>> from domainfm.models import build_encoder
        >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
        >>> model = FoundationModel(enc, {"domain": "synthetic", "preprocessing": {"spatial_dims": 2}})
        >>> x = model.preprocess(np.zeros((16, 16)))   # the domain's preprocessing, rebuilt from the card
        >>> x.shape, model.embed(x[None]).shape
        (torch.Size([1, 16, 16]), torch.Size([1, 32]))
    """

    def __init__(
        self, encoder: nn.Module, card: Card | Mapping, head: nn.Module | None = None, path: Path | None = None
    ):
        super().__init__()
        self.encoder, self.head, self.path = encoder, head, path
        self.card = card if isinstance(card, Card) else Card.from_dict(card)
        self._preprocess: Callable | None = None

    @property
    def domain(self):
        return get_domain(self.card.domain)

    @property
    def preprocess(self) -> Callable[[Any], torch.Tensor]:
        """The domain's preprocessing rebuilt from the card: one input (file or array) gives one
        model-ready ``C x (D x) H x W`` tensor; a batch (an ``N x C x ...`` array or a list of inputs)
        gives ``N x C x ...``."""
        if self._preprocess is None:
            channels = (self.card.preprocessing or {}).get("channels") or (self.card.encoder or {}).get("in_chans")
            self._preprocess = batched_preprocessor(self.domain.preprocessor(self.card), self.spatial_dims, channels)
        return self._preprocess

    @property
    def spatial_dims(self) -> int:
        """2 or 3, from the card (or the patch embed)."""
        dims = (self.card.preprocessing or {}).get("spatial_dims")
        return int(dims) if dims else int(self.encoder.patch_embed.spatial_dims)

    def _ready(self, x) -> torch.Tensor:
        """A model-ready batch on the model's device: tensors are taken as preprocessed, anything else
        (numpy arrays, paths, lists) goes through :attr:`preprocess`."""
        if not isinstance(x, torch.Tensor):
            x = self.preprocess(x)
            x = x[None] if x.ndim == self.spatial_dims + 1 else x
        elif not x.is_floating_point():  # a tensor is taken as model-ready: raw integer pixels are not
            raise DataError(
                None,
                f"a torch.{str(x.dtype).replace('torch.', '')} tensor is not model-ready input (tensors are taken as "
                "preprocessed floats); pass the numpy array to apply the card's preprocessing, or model.preprocess(x)",
            )
        return x.to(next(self.encoder.parameters()).device)

    def __repr__(self) -> str:
        return model_summary(self)

    def _repr_html_(self) -> str:
        return model_summary_html(self)

    def _wavelengths(self, wavelengths):
        if wavelengths is None and self.encoder.patch_embed.kind == "wavelength":
            wavelengths = (self.card.preprocessing or {}).get("wavelengths")
        return wavelengths

    def features(self, x: torch.Tensor, wavelengths=None, layers=None) -> dict:
        x = self._ready(x)
        self.encoder.check_input(x)
        return self.encoder.forward_features(x, wavelengths=self._wavelengths(wavelengths), layers=layers)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        """One vector per input (``B x E``), without gradients. A tensor is taken as model-ready; a numpy
        array, path or list goes through the card's preprocessing first (see :attr:`preprocess`)."""
        x = self._ready(x)
        self.encoder.check_input(x)
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise DataError(None, f"the input holds {bad} NaN/inf values; the embeddings would be NaN: clean the input")
        return self.encoder.embed(x, wavelengths=self._wavelengths(wavelengths))

    def logits(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        """Head output for a batch (a fine-tuned checkpoint is needed)."""
        if self.head is None:
            raise CheckpointError(
                f"{self.path or 'this model'}: this checkpoint has no head (it was not fine-tuned); "
                "fine-tune it first: domainfm.finetune(checkpoint, task=...)"
            )
        feats = self.features(x, wavelengths, layers=getattr(self.head, "layers", None))
        return self.head(feats)

    def forward(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        return (
            self.logits(x, wavelengths)
            if self.head is not None
            else self.encoder(x, wavelengths=self._wavelengths(wavelengths))
        )


def check_card(card: Card | Mapping, ckpt: str | Path) -> None:
    """A card ``load`` and ``info`` can trust: a known domain and a complete, sane encoder section (checked
    before anything is allocated); one-line :class:`CheckpointError` naming the key otherwise."""
    card = card if isinstance(card, Card) else Card.from_dict(card)
    where = f"{ckpt}/card.json"
    domain = card.domain
    if not isinstance(domain, str) or domain not in list_domains():
        raise CheckpointError(
            f"{where}: domain: "
            + unknown_choice("domain", domain, list_domains(), "installed domains")
            + " (install the plugin the checkpoint was made with, or the card was edited)"
        )
    enc = card.encoder
    if not isinstance(enc, dict):
        raise CheckpointError(f"{where}: the encoder section is missing; this is not a complete domainfm card")
    arch = {"depth": None, "embed_dim": None, "num_heads": None, "patch_size": None, "img_size": None}
    arch.update({k: enc.get(k) for k in arch if k in enc})
    if any(v is None for v in arch.values()):
        missing = ", ".join(f"encoder.{k}" for k, v in arch.items() if v is None)
        raise CheckpointError(f"{where}: {missing} missing; this is not a complete domainfm card")
    problem = shape_problem(**arch, in_chans=enc.get("in_chans"))
    if problem:
        raise CheckpointError(f"{where}: encoder.{problem} (the card was edited or damaged)")


def card_weights_mismatch(enc: dict, tensors: dict[str, torch.Tensor], prefix: str) -> str | None:
    """The card's ``embed_dim``/``in_chans`` against the shapes of the weights, in the card's words."""
    norm = tensors.get(prefix + "norm.weight")
    if norm is not None and norm.ndim == 1 and int(norm.shape[0]) != enc.get("embed_dim"):
        return f"encoder.embed_dim is {enc.get('embed_dim')} but the weights are {int(norm.shape[0])} wide"
    proj = tensors.get(prefix + "patch_embed.proj.weight")
    chans = enc.get("in_chans")
    if enc.get("patch_embed") in ("2d", "3d") and proj is not None and proj.ndim >= 4 and chans is not None:
        if int(proj.shape[1]) != chans:
            return f"encoder.in_chans is {chans} but the weights take {int(proj.shape[1])} channel(s)"
    return None


def load(path: str | Path, device: str | torch.device = "cpu") -> FoundationModel:
    """Rebuild a model (encoder, head if fine-tuned, preprocessing) from a checkpoint or run folder.

    Weights come from safetensors, the architecture and preprocessing from the JSON card: nothing
    is unpickled.

    Example:
        >>> import tempfile
        >>> from domainfm.pipelines import pretrain
        >>> run = pretrain({"domain": "synthetic", "out": tempfile.mkdtemp(), "data": {"img_size": 16},
        ...     "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        ...     "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False}}).parent
        >>> model = load(run)                 # a run folder: its latest checkpoint
        >>> model.path.name, model.card["stage"]
        ('ckpt-0000002', 'pretrain')
    """
    ckpt = resolve_checkpoint(path)
    card = Card.read(ckpt)
    tensors = load_tensors(ckpt)
    check_card(card, ckpt)
    domain = get_domain(card.domain)  # imports the plugin, which may register its own patch embed
    try:
        encoder = build_encoder(**card.encoder)
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{ckpt}/card.json: the encoder description is not valid ({exc})") from None
    if card.lora:
        apply_lora(encoder, rank=card.lora["rank"], alpha=card.lora["alpha"])
    prefix = "ema.encoder." if card.ema and any(k.startswith("ema.encoder.") for k in tensors) else "encoder."
    mismatch = card_weights_mismatch(card.encoder, tensors, prefix)
    if mismatch:
        raise CheckpointError(f"{ckpt}/card.json: {mismatch}; the card was edited or belongs to other weights")
    load_module_state(encoder, tensors, prefix=prefix)
    if card.lora:
        merge_lora(encoder)
    head = None
    if card.task:
        cfg = config_from_card(card, check_paths=False)
        head = domain.head(card.task, encoder, int(card.num_classes), cfg)
        hprefix = "ema.head." if prefix.startswith("ema.") else "head."
        load_module_state(head, tensors, prefix=hprefix)
    model = FoundationModel(encoder, card, head, ckpt).to(device)
    model.eval()
    return model
