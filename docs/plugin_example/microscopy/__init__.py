"""A worked example of a domain in one folder: fluorescence microscopy (16-bit single-channel TIFF).

Installed as a plugin with one entry point in its own package's ``pyproject.toml``::

    [project.entry-points."domainfm.domains"]
    microscopy = "microscopy:MicroscopyDomain"

The contract test (``tests/architecture/test_domain_contract.py``) runs it like the shipped domains.
"""

from microscopy.domain import MicroscopyDomain

__all__ = ["MicroscopyDomain"]
