"""Pathology domain plugin for domainfm: whole-slide images (OpenSlide) to MPP-aware tissue tiles,
tile pretraining with stain augmentation, slide embeddings, and attention-MIL slide classification
with heatmaps.

Example:
    >>> from domainfm.pathology import PathologyDomain, tile_slide, tissue_mask
    >>> PathologyDomain.name
    'pathology'
"""

from . import store as _store  # noqa: F401  (registers the pathology store preparer)
from .datasets import SlideRecord, SlideTileDataset, TileFolderDataset, TileTransform, list_slides
from .domain import PathologyDomain, PathologyOptions, make_view_augment
from .embed import embed_slides, load_slide_features
from .heatmap import heatmap_figure, write_heatmap, write_tile_scores
from .mil import GatedABMIL, MeanPoolMIL, train_mil
from .slide import SlideCache, open_slide, slide_mpp
from .stain import MacenkoNormalizer, hed_jitter
from .synthetic import write_pyramidal_tiff, write_synthetic_slide
from .tiling import NoTissueError, TileGrid, cached_tile_grid, tile_slide
from .tissue import tissue_mask

__all__ = [
    "PathologyDomain",
    "PathologyOptions",
    "SlideRecord",
    "SlideTileDataset",
    "TileFolderDataset",
    "TileTransform",
    "list_slides",
    "make_view_augment",
    "embed_slides",
    "load_slide_features",
    "write_heatmap",
    "write_tile_scores",
    "heatmap_figure",
    "GatedABMIL",
    "MeanPoolMIL",
    "train_mil",
    "SlideCache",
    "open_slide",
    "slide_mpp",
    "MacenkoNormalizer",
    "hed_jitter",
    "write_pyramidal_tiff",
    "write_synthetic_slide",
    "NoTissueError",
    "TileGrid",
    "cached_tile_grid",
    "tile_slide",
    "tissue_mask",
]
