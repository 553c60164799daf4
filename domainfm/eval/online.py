"""Online kNN probe: is the encoder learning anything, measured every N pretraining steps.

The engine calls ``probe(step, encoder)``; every ``every`` steps it embeds a small labelled train and
validation set (no grad, eval mode, then restores the mode) and returns kNN accuracy / balanced
accuracy on validation. Next to the collapse monitor, a flat curve shows early that a run is not
learning.

Example:
    >>> import torch
    >>> from domainfm.data.sample import make_sample
    >>> from domainfm.models import build_encoder
    >>> ds = [make_sample(torch.full((1, 16, 16), float(i % 2)), label=i % 2) for i in range(8)]
    >>> probe = OnlineKNNProbe(ds, ds, every=5, k=3)
    >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)
    >>> probe(3, enc)
    {}
    >>> sorted(probe(5, enc))
    ['probe/knn_acc', 'probe/knn_balanced_acc']
"""

from __future__ import annotations

from domainfm.eval.embeddings import embed_dataset, embed_function
from domainfm.eval.metrics import classification_metrics
from domainfm.eval.protocols import knn_probe
from domainfm.eval.splits import check_labels


class OnlineKNNProbe:
    """Callable ``probe(step, encoder) -> dict[str, float]`` for the pretraining engine.

    Args:
        train_dataset: labelled samples (the kNN memory); capped at ``max_train`` items.
        val_dataset: labelled samples to classify; capped at ``max_val`` items.
        every: run when ``step % every == 0`` (and ``step > 0``); other steps return ``{}``.
        k: neighbours; ``temperature``: vote weighting.
        batch_size: embedding batch size.

    The encoder may be a ``ViTEncoder`` (``.embed``) or any module whose ``forward_features``/
    ``forward`` gives tokens; the probe runs on the encoder's device.

    Example:
        >>> OnlineKNNProbe([], [], every=0)
        Traceback (most recent call last):
        ...
        ValueError: OnlineKNNProbe: every must be >= 1, got 0
    """

    def __init__(
        self,
        train_dataset,
        val_dataset,
        every: int,
        k: int = 20,
        batch_size: int = 64,
        temperature: float = 0.07,
        max_train: int = 2000,
        max_val: int = 1000,
        prefix: str = "probe/",
    ):
        if every < 1:
            raise ValueError(f"OnlineKNNProbe: every must be >= 1, got {every}")
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.every = int(every)
        self.k = int(k)
        self.batch_size = int(batch_size)
        self.temperature = float(temperature)
        self.max_train = max_train
        self.max_val = max_val
        self.prefix = prefix
        self.history: list[tuple[int, dict[str, float]]] = []

    def __call__(self, step: int, encoder) -> dict[str, float]:
        if step <= 0 or step % self.every:
            return {}
        fn = embed_function(encoder)
        model = _EmbedAdapter(encoder, fn)
        tx, ty = embed_dataset(
            model, self.train_dataset, self.batch_size, source="online probe train set", max_items=self.max_train
        )
        vx, vy = embed_dataset(
            model, self.val_dataset, self.batch_size, source="online probe val set", max_items=self.max_val
        )
        ty = check_labels(ty, "online probe train set")
        k = int(max(ty.max(), vy.max()) + 1)
        scores = knn_probe(tx, ty, vx, k=self.k, num_classes=k, temperature=self.temperature)
        m = classification_metrics(vy, scores, k, metrics=("accuracy", "balanced_accuracy"))
        out = {f"{self.prefix}knn_acc": m["accuracy"], f"{self.prefix}knn_balanced_acc": m["balanced_accuracy"]}
        self.history.append((int(step), out))
        return out


class _EmbedAdapter:
    """Gives ``embed_dataset`` the encoder (for device/eval mode) and the embedding function."""

    def __init__(self, encoder, fn):
        self.encoder = encoder
        self.embed = fn
