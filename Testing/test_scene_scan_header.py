"""What a volume's metadata states, read by the module (real MRML, slicer-core) as `lsseg segment` reads a scan's:
the header of the first DICOM file a volume loaded by Slicer's DICOM module came from, or the BIDS name and
sidecar of the NIfTI file Slicer read it from. Another modality than the bundle's is refused when *Apply* is
pressed; another MR weighting is warned about in the status line and the log. Slicer's DICOM database is stood in
for by an index of a folder's files by SOP Instance UID (the lookup the module passes in is Slicer's
``slicer.dicomDatabase.fileForInstance``)."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import slicer  # slicer-core: a missing wheel fails the run, never skips it
from dicom_series import write_series

from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.scan_io import load_scan
from LabelSharingSegLib.scene import geometry as geo
from LabelSharingSegLib.scene.logic import SegmentationSceneLogic
from LabelSharingSegLib.scene.scanheader import INSTANCE_UIDS_ATTRIBUTE
from lsseg_training.data import sources
from lsseg_training.demo import LS_BUNDLE, shipped_bundles_dir

PD_WARNING = (
    "'FSE PD AXIAL OBL': the scan's DICOM header describes a PD-weighted scan (series 'FSE PD AXIAL OBL', TR 2300 "
    "ms, TE 22 ms), and this bundle was trained on T1-weighted scans: its labels may be wrong"
)


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)


def _instance_index(folder: Path) -> dict[str, str]:
    """{SOP Instance UID: file} of the DICOM files in ``folder``, as Slicer's database indexes them."""
    index = {}
    for path in sorted(folder.iterdir()):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        index[reader.GetMetaData("0008|0018").strip()] = str(path)
    return index


def _dicom_volume(scene, folder: Path, name: str):
    """The series in ``folder`` as Slicer's DICOM module loads it: a volume naming its files' instance UIDs."""
    scan = load_scan(folder)
    volume = geo.createScalarVolumeNode(scene, name, scan.image, scan.affine)
    volume.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(_instance_index(folder)))
    return volume


def _logic(scene, index: dict[str, str] | None):
    lookup = None if index is None else (lambda uid: index.get(uid, ""))
    logic = SegmentationSceneLogic(scene, device="cpu", dicomFileForInstance=lookup)
    logic.loadBundle(shipped_bundles_dir() / LS_BUNDLE)
    return logic


def test_a_real_pd_series_is_warned_about_in_the_status_line_and_the_log(scene, caplog):
    folder = sources.dicom_series_path()
    volume = _dicom_volume(scene, folder, "FSE PD AXIAL OBL")
    logic = _logic(scene, _instance_index(folder))
    run = logic.prepareSegmentTask(volume, "SagittalLobes")
    assert run.warnings == [PD_WARNING]
    message = logic.finishedMessage("out", 1.0, None, run.warnings)
    assert message == f"Done in 1.0 s: 'out'. Warning: {PD_WARNING}."
    # segmented where it lies (automatic alignment finds no pose for it: Testing/test_realscan.py), and logged
    logic.align = False
    with caplog.at_level(logging.WARNING):
        output = logic.segmentTask(volume, "SagittalLobes")
    assert output is not None and PD_WARNING in caplog.text
    # without Slicer's DICOM database nothing is known of the header: no warning, nothing refused
    assert _logic(scene, None).prepareSegmentTask(volume, "SagittalLobes").warnings == []


def test_a_header_stating_ct_is_refused_by_an_mr_bundle_and_one_stating_t1_passes(scene, tmp_path):
    image, affine = sources.load_system_image(sources.COLIN27_HEAD)
    image, affine = np.ascontiguousarray(image[::4, ::4, ::4]), affine @ np.diag([4.0, 4.0, 4.0, 1.0])
    stated_ct = write_series(
        tmp_path / "ct", image, affine, uid="1.2.3.9.1", modality="CT", description="head"
    )
    stated_t1 = write_series(tmp_path / "t1", image, affine, uid="1.2.3.9.2", description="T1 MPRAGE")
    index = {**_instance_index(stated_ct), **_instance_index(stated_t1)}
    logic = _logic(scene, index)
    ct_volume = _dicom_volume(scene, stated_ct, "stated CT")
    with pytest.raises(
        InputError, match="'stated CT': its DICOM header says it is CT, and this bundle was trained on MR"
    ):
        logic.prepareSegmentTask(ct_volume, "SagittalLobes")
    assert logic.prepareSegmentTask(_dicom_volume(scene, stated_t1, "T1"), "SagittalLobes").warnings == []
    # the header's file gone, not a DICOM file, or never indexed: nothing is known, the voxels are checked as ever
    for lookup in ({}, {uid: "" for uid in index}, {uid: str(tmp_path / "gone.dcm") for uid in index}):
        assert _logic(scene, lookup).prepareSegmentTask(ct_volume, "SagittalLobes").warnings == []
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    assert _logic(scene, {uid: str(junk) for uid in index}).prepareSegmentTask(ct_volume, "SagittalLobes")


def test_a_volume_read_from_a_bids_named_nifti_is_warned_about(scene, tmp_path):
    """A volume Slicer read from 'sub-01_T2w.nii.gz' (its own storage node, as *Add Data* reads it): the BIDS
    suffix names the weighting, and the shipped T1 bundle's run is warned about."""
    image, affine = sources.load_system_image(sources.COLIN27_HEAD)
    path = tmp_path / "sub-01_T2w.nii.gz"
    nib.save(
        nib.Nifti1Image(np.ascontiguousarray(image[::4, ::4, ::4]), affine @ np.diag([4, 4, 4, 1.0])), path
    )
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "sub-01_T2w")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(volume)
    volume.SetAndObserveStorageNodeID(storage.GetID())
    run = _logic(scene, None).prepareSegmentTask(volume, "SagittalLobes")
    assert run.warnings == [
        "'sub-01_T2w': the scan's BIDS name describes a T2-weighted scan (BIDS suffix 'T2w'), and this bundle was "
        "trained on T1-weighted scans: its labels may be wrong"
    ]
    path.rename(tmp_path / "moved.nii.gz")  # the file gone since: nothing known, nothing said
    assert _logic(scene, None).prepareSegmentTask(volume, "SagittalLobes").warnings == []
