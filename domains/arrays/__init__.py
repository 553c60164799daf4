"""The ``arrays`` domain: data held in memory (numpy arrays, tensors, torch/MONAI/TorchGeo datasets) or
``.npy``/``.npz`` files, adapted to samples by :mod:`domainfm.data.adapters`.

Example:
    >>> from domainfm.arrays import ArraysDomain
    >>> ArraysDomain.name
    'arrays'
"""

from domainfm.arrays.domain import ArraysDomain

__all__ = ["ArraysDomain"]
