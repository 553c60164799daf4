"""The built-in synthetic domain: generated 2D/3D shapes, the quickstart's data and the core tests' data.

Example:
    >>> from domainfm.synthetic import ShapesDataset, SyntheticDomain
    >>> SyntheticDomain.name, len(ShapesDataset(4, size=16))
    ('synthetic', 4)
"""

from domainfm.synthetic.domain import CLASSES, ShapesDataset, SyntheticDomain, render_shape

__all__ = ["CLASSES", "ShapesDataset", "SyntheticDomain", "render_shape"]
