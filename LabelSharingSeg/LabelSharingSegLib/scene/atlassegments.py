"""The atlas segmentation a user draws on: is it the loaded bundle's, and its chosen segments as masks on the
atlas grid. Every refusal is an InputError naming the segment and what to do."""

from __future__ import annotations

import numpy as np

from ..engine.errors import InputError
from . import segments as seg


def checkAtlasSegmentation(atlasSegmentationNode, bundleId: str) -> None:
    """InputError unless ``atlasSegmentationNode`` is an atlas segmentation ('Load atlas') of the bundle with
    id ``bundleId``."""
    if atlasSegmentationNode is None:
        raise InputError("No atlas segmentation selected: click 'Load atlas' (logic.loadAtlas()) first.")
    if not hasattr(atlasSegmentationNode, "IsA") or not atlasSegmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise InputError("The atlas segmentation must be a segmentation node (from 'Load atlas').")
    ownerId = atlasSegmentationNode.GetAttribute(seg.ATTRIBUTE_BUNDLE_ID)
    if atlasSegmentationNode.GetAttribute(seg.ATTRIBUTE_ROLE) != seg.ROLE_ATLAS_LABELS or not ownerId:
        raise InputError(
            f"'{atlasSegmentationNode.GetName()}' is not an atlas segmentation: click 'Load atlas' and draw "
            "or edit segments on the segmentation it creates."
        )
    if ownerId != bundleId:
        raise InputError(
            f"'{atlasSegmentationNode.GetName()}' belongs to the atlas of another bundle (id {ownerId[:12]}), "
            f"not the loaded one (id {bundleId[:12]}): load that bundle again, or click 'Load atlas' "
            "for the loaded bundle and draw there."
        )


def atlasSegmentMasks(atlasSegmentationNode, segmentIds, shape, affine):
    """(masks bool[K, *shape], list of segment IDs, names, colours, terminologies) of the chosen segments
    (IDs or names; None: all) on the atlas grid ``shape`` / voxel->RAS ``affine``. Raises InputError for
    unknown, repeated, ambiguous, empty or out-of-view segments."""
    segmentation = atlasSegmentationNode.GetSegmentation()
    available = seg.segmentIds(atlasSegmentationNode)
    if segmentIds is None:
        chosen = list(available)
    else:
        if isinstance(segmentIds, str):
            segmentIds = [segmentIds]
        chosen = []
        for requested in segmentIds:
            if requested in available:
                chosen.append(requested)
                continue
            byName = seg.segmentIdsByName(atlasSegmentationNode, requested)
            if not byName:
                raise InputError(
                    f"'{atlasSegmentationNode.GetName()}' has no segment '{requested}' "
                    f"(its segments: {', '.join(segmentation.GetSegment(s).GetName() for s in available)})"
                )
            chosen.append(byName[0])
    if not chosen:
        raise InputError("No atlas segments selected: check at least one segment to segment on the target.")
    if len(set(chosen)) != len(chosen):
        raise InputError("The same atlas segment was selected twice.")
    names = [segmentation.GetSegment(s).GetName() for s in chosen]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(
            f"Selected atlas segments share the name(s) {', '.join(duplicates)}: output segments are matched "
            "by name, so rename them in the Segment Editor first."
        )
    masks = np.zeros((len(chosen),) + tuple(shape), dtype=bool)
    for index, segmentId in enumerate(chosen):
        outside = seg.segmentVoxelsOutside(atlasSegmentationNode, segmentId, shape, affine)
        if outside:
            raise InputError(
                f"Atlas segment '{names[index]}' reaches outside the atlas's field of view ({outside} voxel(s) "
                "would be lost): draw it inside the atlas image."
            )
        masks[index] = seg.segmentMask(atlasSegmentationNode, segmentId, shape, affine)
        if not masks[index].any():
            raise InputError(
                f"Atlas segment '{names[index]}' is empty on the atlas grid: draw it with the Segment Editor "
                "(inside the atlas image) or uncheck it."
            )
    colors = [tuple(float(c) for c in segmentation.GetSegment(s).GetColor()) for s in chosen]
    terminologies = [seg.segmentTerminology(segmentation.GetSegment(s)) for s in chosen]
    return masks, chosen, names, colors, terminologies
