"""Encoders and token makers."""

from domainfm.models.encoder import ViTEncoder, build_encoder
from domainfm.models.patch_embed import PatchEmbed2d, PatchEmbed3d, WavelengthPatchEmbed

__all__ = ["ViTEncoder", "build_encoder", "PatchEmbed2d", "PatchEmbed3d", "WavelengthPatchEmbed"]
