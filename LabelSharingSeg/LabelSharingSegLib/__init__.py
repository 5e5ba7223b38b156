"""LabelSharingSeg library.

``LabelSharingSegLib.engine`` is pure torch/monai/numpy/nibabel (no Slicer import) and
``LabelSharingSegLib.scene`` adapts MRML nodes to the engine (imports ``slicer``/``vtk`` MRML, never Qt).
Importing this package imports neither, so the engine works where Slicer is absent.
"""

# The one place the project's version is written: pyproject.toml reads it ([tool.setuptools.dynamic]),
# bundles record it and `lsseg --version` prints it.
__version__ = "0.1.0"
