"""What the DICOM header of a volume loaded by Slicer's DICOM module states about the kind of scan (modality, MR
weighting), so the module checks it as ``lsseg segment`` checks a DICOM series it reads itself.

Slicer's DICOM scalar volume plugin names the files a volume came from by their SOP Instance UIDs, in the node
attribute ``DICOM.instanceUIDs``; its DICOM database (``slicer.dicomDatabase.fileForInstance``) maps one to its
file. The module passes that lookup in; here it is any callable from UID to path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..engine.errors import LabelSharingSegError
from ..engine.scan_io import HeaderStatement, dicom_header_statement

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"

FileForInstance = Callable[[str], str]


def volumeHeaderStatement(volumeNode, fileForInstance: FileForInstance | None) -> HeaderStatement | None:
    """What the header of the first file ``volumeNode`` was loaded from states; None when it was not loaded from
    DICOM, or its file is no longer found or cannot be read (nothing is then known, and the voxels are still
    checked as for any volume)."""
    uids = (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids or fileForInstance is None:
        return None
    try:
        path = fileForInstance(uids[0])
    except (LookupError, OSError):
        return None
    if not path or not Path(path).is_file():
        return None
    try:
        return dicom_header_statement(path)
    except LabelSharingSegError:
        return None
