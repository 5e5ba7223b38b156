"""LabelSharingSeg library.

``LabelSharingSegLib.engine`` is pure torch/monai/numpy/nibabel (no Slicer import) and
``LabelSharingSegLib.scene`` adapts MRML nodes to the engine (imports ``slicer``/``vtk`` MRML, never Qt).
Importing this package imports neither, so the engine works where Slicer is absent.
"""
