"""domainfm: domain-specialized vision foundation models (medical, remote sensing, pathology).

Example:
    >>> import domainfm
    >>> enc = domainfm.build_encoder("vit-tiny", patch_embed="2d", in_chans=1, img_size=32, patch_size=8, depth=1)
    >>> enc.embed_dim
    192
"""

from domainfm import _omp  # noqa: F401  (before torch loads: see domainfm/_omp.py)
from domainfm.api import (
    Config,
    FoundationModel,
    config_from_card,
    demo,
    embed,
    evaluate,
    export,
    finetune,
    import_weights,
    load,
    load_config,
    load_exported,
    predict,
    pretrain,
    reconstruction,
    steps_for_cpu_budget,
)
from domainfm.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DomainFMError,
    NonFiniteLossError,
    NotLearningError,
    UnsupportedError,
    debug,
)
from domainfm.models.encoder import build_encoder

__version__ = "0.1.0"

__all__ = [
    "pretrain",
    "finetune",
    "load",
    "embed",
    "predict",
    "export",
    "load_exported",
    "evaluate",
    "demo",
    "import_weights",
    "steps_for_cpu_budget",
    "reconstruction",
    "build_encoder",
    "load_config",
    "Config",
    "FoundationModel",
    "config_from_card",
    "debug",
    "DomainFMError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "NonFiniteLossError",
    "NotLearningError",
    "UnsupportedError",
]
