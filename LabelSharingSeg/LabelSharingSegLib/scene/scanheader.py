"""What the metadata of a volume in the scene states about the kind of scan (modality, MR weighting), so the module
checks it as ``lsseg segment`` checks the scans it reads itself: the DICOM header of a volume loaded by Slicer's
DICOM module, or the BIDS name and JSON sidecar of a volume read from a NIfTI file.

Slicer's DICOM scalar volume plugin names the files a volume came from by their SOP Instance UIDs, in the node
attribute ``DICOM.instanceUIDs``; its DICOM database (``slicer.dicomDatabase.fileForInstance``) maps one to its
file. The module passes that lookup in; here it is any callable from UID to path. A volume read from a file keeps
the file's name in its storage node.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..engine.errors import LabelSharingSegError
from ..engine.modality import HeaderStatement
from ..engine.nifti_io import has_nifti_ending
from ..engine.scan_io import bids_statement, dicom_header_statement

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"

FileForInstance = Callable[[str], str]


def volumeHeaderStatement(volumeNode, fileForInstance: FileForInstance | None) -> HeaderStatement | None:
    """What the header of the first DICOM file ``volumeNode`` was loaded from states, or else the BIDS name and
    sidecar of the NIfTI file it was read from; None when neither is found or readable (nothing is then known,
    and the voxels are still checked as for any volume)."""
    uids = (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if uids:
        return _dicomStatement(uids[0], fileForInstance)
    storage = volumeNode.GetStorageNode()
    fileName = storage.GetFileName() if storage is not None else None
    if fileName and has_nifti_ending(fileName) and Path(fileName).is_file():
        return bids_statement(fileName)
    return None


def _dicomStatement(uid: str, fileForInstance: FileForInstance | None) -> HeaderStatement | None:
    if fileForInstance is None:
        return None
    try:
        path = fileForInstance(uid)
    except (LookupError, OSError):
        return None
    if not path or not Path(path).is_file():
        return None
    try:
        return dicom_header_statement(path)
    except LabelSharingSegError:
        return None
