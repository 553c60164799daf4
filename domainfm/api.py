"""The notebook surface, re-exported: ``pretrain``, ``finetune``, ``load``, ``embed``, ``predict``, ``export``,
``evaluate``, ``demo`` and the config helpers.

Example:
    >>> import domainfm, tempfile, torch
    >>> out = tempfile.mkdtemp()
    >>> ckpt = domainfm.pretrain({"domain": "synthetic", "out": out, "data": {"img_size": 32},
    ...     "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
    ...     "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False}})
    >>> model = domainfm.load(ckpt)
    >>> model.embed(torch.rand(2, 1, 32, 32)).shape
    torch.Size([2, 32])
"""

from domainfm.card import Card, build_card
from domainfm.config import Config, parse_config, save_config
from domainfm.demo import run_demo as demo
from domainfm.deploy import export
from domainfm.exported import ExportedModel, load_exported
from domainfm.model import FoundationModel, load
from domainfm.pipelines import (
    embed,
    evaluate,
    evaluate_task,
    finetune,
    predict,
    pretrain,
    reconstruction,
    steps_for_cpu_budget,
)
from domainfm.runconfig import config_from_card, load_config
from domainfm.weights import import_weights

__all__ = [
    "pretrain",
    "finetune",
    "load",
    "embed",
    "predict",
    "export",
    "load_exported",
    "ExportedModel",
    "evaluate",
    "evaluate_task",
    "reconstruction",
    "steps_for_cpu_budget",
    "demo",
    "import_weights",
    "load_config",
    "parse_config",
    "save_config",
    "config_from_card",
    "build_card",
    "Card",
    "Config",
    "FoundationModel",
]
