"""Segmentation nodes: build segments from a label map, write them into a node (replacing only segments
matched by name), and read segments back as binary masks on a given grid.

Segments are prepared as standalone ``vtkSegment`` objects first (no scene change), then added to the
node in one modify block, so a failure while preparing leaves the scene as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk

from ..engine.errors import InputError
from .geometry import BINARY_LABELMAP, maskOnGrid, orientedImageFromMask

# node attributes this module writes (saved with the scene)
ATTRIBUTE_BUNDLE_ID = "LabelSharingSeg.BundleId"
ATTRIBUTE_ROLE = "LabelSharingSeg.Role"
ROLE_ATLAS_IMAGE = "atlasImage"
ROLE_ATLAS_LABELS = "atlasLabels"
ROLE_OUTPUT = "output"

_DEFAULT_TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
_DEFAULT_REGION_CONTEXT = "Anatomic codes - DICOM master list"
# keys of a bundle's terminology dict -> (getter on vtkSlicerTerminologyEntry, alternative getter)
_TERMINOLOGY_FIELDS = (
    ("category", "GetCategoryObject", None),
    ("type", "GetTypeObject", None),
    ("typeModifier", "GetTypeModifierObject", None),
    ("anatomicRegion", "GetRegionObject", "GetAnatomicRegionObject"),
    ("anatomicRegionModifier", "GetRegionModifierObject", "GetAnatomicRegionModifierObject"),
)
_TERMINOLOGY_ALIASES = {"region": "anatomicRegion", "regionModifier": "anatomicRegionModifier"}


# --------------------------------------------------------------------------------------------------
# terminology
# --------------------------------------------------------------------------------------------------


def _codeTriple(value) -> tuple[str, str, str] | None:
    if isinstance(value, dict):
        value = [
            value.get("CodingSchemeDesignator") or value.get("scheme"),
            value.get("CodeValue") or value.get("value"),
            value.get("CodeMeaning") or value.get("meaning"),
        ]
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        return None
    scheme, code, meaning = (str(v) if v is not None else "" for v in value)
    if not (scheme and code):
        return None
    return scheme, code, meaning


def terminologyString(terminology: dict | None) -> str | None:
    """Slicer's serialized terminology entry for a bundle's DICOM-style code dict, or None when the dict
    lacks a usable category and type (then the segment simply carries no terminology)."""
    if not terminology or not isinstance(terminology, dict):
        return None
    codes = {}
    for key, value in terminology.items():
        key = _TERMINOLOGY_ALIASES.get(key, key)
        triple = _codeTriple(value)
        if triple is not None:
            codes[key] = triple
    if "category" not in codes or "type" not in codes:
        return None
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(str(terminology.get("contextName") or _DEFAULT_TERMINOLOGY_CONTEXT))
    if "anatomicRegion" in codes:
        regionContext = str(terminology.get("anatomicContextName") or _DEFAULT_REGION_CONTEXT)
        setter = getattr(entry, "SetRegionContextName", None) or entry.SetAnatomicContextName
        setter(regionContext)
    for key, getterName, alternative in _TERMINOLOGY_FIELDS:
        if key not in codes:
            continue
        getter = getattr(entry, getterName, None) or getattr(entry, alternative)
        codeObject = getter()
        scheme, code, meaning = codes[key]
        codeObject.SetCodingSchemeDesignator(scheme)
        codeObject.SetCodeValue(code)
        codeObject.SetCodeMeaning(meaning)
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)


def segmentTerminology(segment) -> str | None:
    """The serialized terminology of a segment, or None."""
    if hasattr(segment, "GetTerminology"):
        text = segment.GetTerminology()
        return text or None
    tag = vtk.reference("")  # older Slicer: terminology is a tag
    if segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag):
        return str(tag) or None
    return None


def _setSegmentTerminology(segment, text: str | None) -> None:
    if not text:
        return
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(text)
    else:
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), text)


# --------------------------------------------------------------------------------------------------
# building and writing segments
# --------------------------------------------------------------------------------------------------


@dataclass
class SegmentSpec:
    """One segment to write: a boolean [i, j, k] mask on the grid given by the job's ``ijkToLocal``."""

    name: str
    color: tuple[float, float, float]
    mask: np.ndarray
    terminology: str | None = None


def specsFromLabelmap(labelmap: np.ndarray, labels, terminologies: dict | None = None) -> list[SegmentSpec]:
    """One SegmentSpec per LabelInfo (in the given order; labels absent from the map give empty segments).

    ``terminologies`` optionally maps a label value to an already serialized terminology string, which
    wins over the LabelInfo's own code dict (used to carry atlas segments' terminology to the output).
    """
    labelmap = np.asarray(labelmap)
    specs = []
    for label in labels:
        value = int(label.value)
        if value == 0:
            continue
        text = (terminologies or {}).get(value) or terminologyString(getattr(label, "terminology", None))
        color = tuple(float(c) for c in label.color)
        specs.append(SegmentSpec(name=str(label.name), color=color, mask=labelmap == value, terminology=text))
    return specs


def _buildSegment(spec: SegmentSpec, ijkToLocal: np.ndarray):
    segment = slicer.vtkSegment()
    segment.SetName(spec.name)
    segment.SetColor(*spec.color)
    if hasattr(segment, "SetNameAutoGenerated"):
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
    _setSegmentTerminology(segment, spec.terminology)
    segment.AddRepresentation(BINARY_LABELMAP, orientedImageFromMask(spec.mask, ijkToLocal))
    return segment


def segmentIdsByName(segmentationNode, name: str) -> list[str]:
    segmentation = segmentationNode.GetSegmentation()
    ids = []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        if segmentation.GetSegment(segmentId).GetName() == name:
            ids.append(segmentId)
    return ids


def checkWritableSegmentation(segmentationNode) -> None:
    """An existing output node must be a segmentation whose source representation is a binary labelmap."""
    if not hasattr(segmentationNode, "IsA") or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise InputError("The output must be a segmentation node.")
    segmentation = segmentationNode.GetSegmentation()
    source = (
        segmentation.GetSourceRepresentationName()
        if hasattr(segmentation, "GetSourceRepresentationName")
        else segmentation.GetMasterRepresentationName()
    )
    if segmentation.GetNumberOfSegments() > 0 and source != BINARY_LABELMAP:
        raise InputError(
            f"The output segmentation '{segmentationNode.GetName()}' stores its segments as '{source}'; "
            "choose a new output, or convert it to a binary labelmap first (Segmentations module)."
        )


def writeSegments(segmentationNode, specs: list[SegmentSpec], ijkToLocal: np.ndarray) -> list[str]:
    """Put ``specs`` into ``segmentationNode``: a segment with the same name is replaced in place (same
    ID, same position), others are appended; every other segment is kept. Returns the segment IDs.

    All vtkSegment objects are built before the node is touched.
    """
    built = [(spec, _buildSegment(spec, ijkToLocal)) for spec in specs]
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0 and hasattr(segmentation, "SetSourceRepresentationName"):
        segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
    written = []
    wasModifying = segmentationNode.StartModify()
    try:
        for spec, segment in built:
            existing = segmentIdsByName(segmentationNode, spec.name)
            if existing:
                segmentId = existing[0]
                index = segmentation.GetSegmentIndex(segmentId)
                following = (
                    segmentation.GetNthSegmentID(index + 1)
                    if index + 1 < segmentation.GetNumberOfSegments()
                    else ""
                )
                for duplicate in existing:
                    segmentation.RemoveSegment(duplicate)
                if not segmentation.AddSegment(segment, segmentId, following):
                    raise InputError(
                        f"could not write segment '{spec.name}' into '{segmentationNode.GetName()}'"
                    )
            else:
                segmentId = segmentation.GenerateUniqueSegmentID(spec.name)
                if not segmentation.AddSegment(segment, segmentId):
                    raise InputError(f"could not add segment '{spec.name}' to '{segmentationNode.GetName()}'")
            written.append(segmentId)
        segmentation.CollapseBinaryLabelmaps(False)
    finally:
        segmentationNode.EndModify(wasModifying)
    return written


def createSegmentationNode(scene, name: str, referenceVolumeNode=None, parentTransformNode=None):
    """Add a new, empty segmentation node (with display node) to ``scene``."""
    segmentationNode = slicer.vtkMRMLSegmentationNode()
    segmentationNode.SetName(scene.GenerateUniqueName(name) if hasattr(scene, "GenerateUniqueName") else name)
    scene.AddNode(segmentationNode)
    segmentationNode.CreateDefaultDisplayNodes()
    if referenceVolumeNode is not None:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    if parentTransformNode is not None:
        segmentationNode.SetAndObserveTransformNodeID(parentTransformNode.GetID())
    return segmentationNode


# --------------------------------------------------------------------------------------------------
# reading segments
# --------------------------------------------------------------------------------------------------


def segmentIds(segmentationNode) -> list[str]:
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def segmentMask(segmentationNode, segmentId: str, shape, ijkToLocal: np.ndarray) -> np.ndarray:
    """Boolean [i, j, k] mask of one segment on the grid (``shape``, ``ijkToLocal`` in the segmentation
    node's own coordinates). The node is never modified: when its segments are stored in another
    representation (e.g. closed surface) the conversion runs on a private copy."""
    return maskOnGrid(_segmentImage(segmentationNode, segmentId), shape, ijkToLocal)


def segmentVoxelsOutside(segmentationNode, segmentId: str, shape, ijkToLocal: np.ndarray) -> int:
    """How many of a segment's voxels lie outside the grid (``shape``, ``ijkToLocal``): the part
    :func:`segmentMask` cannot carry onto that grid."""
    from vtk.util import numpy_support

    from ..engine.field_of_view import outside_grid
    from .geometry import vtkMatrixToArray

    oriented = _segmentImage(segmentationNode, segmentId)
    extent = oriented.GetExtent()
    scalars = oriented.GetPointData().GetScalars()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4] or scalars is None:
        return 0
    dims = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    values = numpy_support.vtk_to_numpy(scalars).reshape(dims[::-1]).transpose(2, 1, 0) != 0
    matrix = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(matrix)  # image index -> the node's own coordinates
    offset = np.eye(4)
    offset[:3, 3] = [extent[0], extent[2], extent[4]]  # the array starts at the extent's first index
    return int(outside_grid(values, vtkMatrixToArray(matrix) @ offset, shape, ijkToLocal).sum())


def _segmentImage(segmentationNode, segmentId: str):
    """One segment as a binary labelmap (vtkOrientedImageData), read without modifying the node."""
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetSegment(segmentId) is None:
        raise InputError(f"'{segmentationNode.GetName()}' has no segment with ID '{segmentId}'")
    oriented = slicer.vtkOrientedImageData()
    if segmentation.ContainsRepresentation(BINARY_LABELMAP):
        segmentationNode.GetBinaryLabelmapRepresentation(segmentId, oriented)
    else:
        copy = slicer.vtkSegmentation()
        copy.DeepCopy(segmentation)
        if not copy.CreateRepresentation(BINARY_LABELMAP):
            raise InputError(
                f"segment '{segmentation.GetSegment(segmentId).GetName()}' cannot be converted to a binary labelmap"
            )
        segment = copy.GetSegment(segmentId)
        source = segment.GetRepresentation(BINARY_LABELMAP)
        oriented.DeepCopy(source)
        # a shared labelmap holds several segments: keep only this one's label value
        value = segment.GetLabelValue()
        if oriented.GetPointData().GetScalars() is not None:
            from vtk.util import numpy_support

            scalars = numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars())
            scalars[:] = scalars == value
    return oriented
