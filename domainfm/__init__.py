"""domainfm: domain-specialized vision foundation models (medical, remote sensing, pathology).

Example:
    >>> import domainfm
    >>> enc = domainfm.build_encoder("vit-tiny", patch_embed="2d", in_chans=1, img_size=32, patch_size=8, depth=1)
    >>> enc.embed_dim
    192
"""

from domainfm.api import (
    Config,
    FoundationModel,
    config_from_card,
    demo,
    embed,
    evaluate,
    finetune,
    import_weights,
    load,
    load_config,
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
)
from domainfm.models.encoder import build_encoder

__version__ = "0.1.0"

__all__ = [
    "pretrain",
    "finetune",
    "load",
    "embed",
    "predict",
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
    "DomainFMError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "NonFiniteLossError",
    "NotLearningError",
    "UnsupportedError",
]
