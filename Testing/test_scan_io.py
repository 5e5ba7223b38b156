"""Scans as they come from a scanner or from Slicer: DICOM series (a real scanner series, and series written
here from a real head in oblique poses), NRRD and MetaImage read to the same voxels and RAS affine as NIfTI;
series that cannot be one volume, and hostile files, are refused with the reason."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from dicom_series import itk_volume, write_series

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.inference import segment_task
from LabelSharingSegLib.engine.modality import HeaderStatement
from LabelSharingSegLib.engine.preprocessing import resample_to_grid
from LabelSharingSegLib.engine.scan_io import MAX_SCAN_VOXELS, load_scan
from lsseg_training.cli import main
from lsseg_training.data import sources


def _turned(degrees: float) -> np.ndarray:
    """A 3 mm grid turned about the left-right and then the up-down axis (an oblique acquisition)."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    pitch = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    yaw = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = yaw @ pitch @ np.diag([3.0, 3.0, 4.0])
    affine[:3, 3] = [-85.0, -110.0, -60.0]
    return affine


@pytest.fixture(scope="module")
def head():
    """Colin 27's whole head resampled onto an oblique 3 mm x 3 mm x 4 mm grid, as whole numbers (int16)."""
    image, affine = sources.load_system_image(sources.COLIN27_HEAD)
    grid = _turned(20.0)
    shape = (58, 72, 50)
    source = torch.as_tensor(image)[None]
    voxels = resample_to_grid(source, grid, shape, mode="bilinear", src_affine=affine)[0].numpy()
    return np.round(voxels).astype(np.float32), grid


def test_a_real_scanner_series_reads_as_its_folder_or_any_of_its_files(tmp_path):
    folder = sources.dicom_series_path()
    scan = load_scan(folder)
    assert scan.image.shape == (256, 256, 20) and scan.image.dtype == np.float32
    assert "FSE PD AXIAL OBL" in scan.description and "(MR" in scan.description
    # oblique axial slices 7 mm apart, tilted about left-right (the series' own orientation and positions)
    assert np.allclose(np.linalg.norm(scan.affine[:3, :3], axis=0), [0.859375, 0.859375, 7.0005], atol=1e-3)
    assert 0.1 < abs(scan.affine[1, 2]) / 7.0 < 0.2
    one = load_scan(folder / "brain_007.dcm")
    assert np.array_equal(one.image, scan.image) and np.allclose(one.affine, scan.affine)
    # the same voxels in the same place as SimpleITK's own reading of the series, converted to RAS
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    itk = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(itk).transpose(2, 1, 0), scan.image)
    corner = np.array(itk.TransformIndexToPhysicalPoint((255, 0, 19)))
    assert np.allclose(scan.affine @ [255, 0, 19, 1], [-corner[0], -corner[1], corner[2], 1], atol=1e-3)


def test_a_series_of_one_file_reads_as_one_slice_with_its_header(head, tmp_path):
    """One DICOM file (a single slice, as a scout or a one-image export): read through the file reader, its header
    read once and stated as for a whole series."""
    image, affine = head
    one = write_series(tmp_path / "one", image[:, :, 20:21], affine @ _shifted(20), description="T2 single")
    scan = load_scan(one)
    assert scan.image.shape == (*image.shape[:2], 1) and np.array_equal(scan.image[..., 0], image[:, :, 20])
    assert np.allclose(scan.affine[:3, 3], (affine @ [0, 0, 20, 1])[:3], atol=1e-3)
    assert scan.stated == HeaderStatement("MR", "T2", "series 'T2 single'", "DICOM header")


def _shifted(k: int) -> np.ndarray:
    """Voxel index k along the third axis moved to 0."""
    move = np.eye(4)
    move[2, 3] = k
    return move


def test_dicom_nrrd_and_metaimage_give_the_voxels_and_affine_of_nifti(head, tmp_path):
    image, affine = head
    series = write_series(tmp_path / "dicom", image, affine)
    scan = load_scan(series)
    assert np.array_equal(scan.image, image)
    assert np.allclose(scan.affine, affine, atol=1e-4)
    for ending in ("nrrd", "mha", "nii.gz"):
        path = tmp_path / f"head.{ending}"
        if ending == "nii.gz":
            nib.save(nib.Nifti1Image(image.astype(np.int16), affine), str(path))
        else:
            sitk.WriteImage(itk_volume(image, affine), str(path))
        read = load_scan(path)
        assert np.array_equal(read.image, image), ending
        assert np.allclose(read.affine, affine, atol=1e-5), ending


def test_lsseg_segment_reads_a_dicom_folder_and_writes_on_its_grid(ls_bundle_path, head, tmp_path, capsys):
    image, affine = head
    series = write_series(tmp_path / "dicom", image, affine)
    out = tmp_path / "labels.nii.gz"
    command = ["segment", str(ls_bundle_path), "-i", str(series), "-o", str(out), "--task", "brain"]
    assert main([*command, "--device", "cpu", "--align", "off"]) == 0
    printed = capsys.readouterr().out
    assert "read DICOM series 1.2.826.0.1.3680043.2.1143.7 (MR, 'T1 test'), 50 file(s)" in printed
    written = nib.load(str(out))
    scan = load_scan(series)
    expected = segment_task(
        load_bundle(ls_bundle_path), scan.image, scan.affine, "brain", device="cpu", align=False
    )
    assert np.array_equal(np.asarray(written.dataobj), expected.labelmap)
    assert written.shape == image.shape and np.allclose(written.affine, affine, atol=1e-4)


def test_a_series_whose_header_says_ct_is_refused_by_an_mr_bundle(head, tmp_path, capsys):
    """The header is read before the voxels are judged: this CT-labelled series holds MR intensities."""
    from lsseg_training.demo import LS_BUNDLE, shipped_bundles_dir

    image, affine = head
    series = write_series(tmp_path / "dicom", image, affine, modality="CT", description="head CT")
    assert load_scan(series).stated.modality == "CT"
    assert load_scan(sources.dicom_series_path()).stated.modality == "MR"
    out = tmp_path / "o.nii.gz"
    command = ["segment", str(shipped_bundles_dir() / LS_BUNDLE), "-i", str(series), "-o", str(out)]
    assert main([*command, "--task", "AxialTissue"]) == 2
    err = capsys.readouterr().err
    assert (
        "its DICOM header says it is CT, and this bundle was trained on MR scans" in err and not out.exists()
    )


def _nifti(path, image, affine):
    nib.save(nib.Nifti1Image(image.astype(np.int16), affine), str(path))
    return path


def test_a_bids_name_and_sidecar_state_the_weighting_and_another_one_is_warned_about(head, tmp_path, capsys):
    """A NIfTI named as BIDS names it ('sub-01_T2w.nii.gz') with the JSON sidecar dcm2niix writes beside it:
    the suffix names the weighting (before the sidecar's description and times, in seconds), a sidecar alone
    reveals it by the description or the times, and `lsseg segment` warns as for a DICOM header."""
    from lsseg_training.demo import LS_BUNDLE, shipped_bundles_dir

    image, affine = head
    t2 = _nifti(tmp_path / "sub-01_T2w.nii.gz", image, affine)
    assert load_scan(t2).stated == HeaderStatement("MR", "T2", "BIDS suffix 'T2w'", "BIDS name")
    sidecar = {"Modality": "MR", "SeriesDescription": "t2_tse_tra", "RepetitionTime": 4.0, "EchoTime": 0.1}
    (tmp_path / "sub-01_T2w.json").write_text(json.dumps(sidecar))
    evidence = "BIDS suffix 'T2w', series 't2_tse_tra', TR 4000 ms, TE 100 ms"
    assert load_scan(t2).stated == HeaderStatement("MR", "T2", evidence, "BIDS name")
    out = tmp_path / "labels.nii.gz"
    command = ["segment", str(shipped_bundles_dir() / LS_BUNDLE), "-i", str(t2), "-o", str(out)]
    assert main([*command, "--task", "AxialTissue", "--align", "off", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"WARNING: the scan's BIDS name describes a T2-weighted scan ({evidence}), and this bundle" in err
    # no BIDS suffix: the sidecar's times say proton density (those of the real PD series)
    plain = _nifti(tmp_path / "head.nii.gz", image, affine)
    (tmp_path / "head.json").write_text(
        json.dumps({"Modality": "MR", "RepetitionTime": 2.3, "EchoTime": 0.022})
    )
    assert load_scan(plain).stated == HeaderStatement("MR", "PD", "TR 2300 ms, TE 22 ms", "BIDS sidecar")
    # a T1w name with a sidecar saying CT: the sidecar's modality wins, and an MR bundle refuses it
    t1 = _nifti(tmp_path / "sub-01_T1w.nii.gz", image, affine)
    (tmp_path / "sub-01_T1w.json").write_text(json.dumps({"Modality": "CT"}))
    assert load_scan(t1).stated == HeaderStatement("CT", source="BIDS sidecar")
    assert main(["segment", str(shipped_bundles_dir() / LS_BUNDLE), "-i", str(t1), "-o", str(out),
                 "--task", "AxialTissue", "--overwrite"]) == 2  # fmt: skip
    assert (
        "its BIDS sidecar says it is CT, and this bundle was trained on MR scans" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps(
            {"Modality": 5, "RepetitionTime": True, "EchoTime": "0.022", "SeriesDescription": 7}
        ).encode(),
        b'{"Modality": "MR", "EchoTime": 0.1, "pad": "' + b"x" * 1_000_001 + b'"}',
        b"\xff\xfe\x00",
        b"[" * 200_000,
    ],
)
def test_a_sidecar_that_states_nothing_readable_is_passed_over(head, tmp_path, content):
    """Broken, hostile or oversized sidecars state nothing (they are not the scan): the scan reads as without."""
    image, affine = head
    path = _nifti(tmp_path / "head.nii.gz", image, affine)
    (tmp_path / "head.json").write_bytes(content)
    scan = load_scan(path)
    assert scan.stated == HeaderStatement()
    assert np.array_equal(scan.image, image.astype(np.int16))


def test_a_series_nested_in_an_export_tree_is_found_from_its_top_folder(head, tmp_path):
    """A CD or PACS export puts series some folders down (DICOM/<patient>/<study>/<series>/)."""
    image, affine = head
    top = tmp_path / "export"
    write_series(top / "DICOM" / "PAT1" / "ST1" / "SE1", image, affine, description="T1 nested")
    (top / "README.TXT").write_text("exported")
    scan = load_scan(top)
    assert "'T1 nested'" in scan.description and np.array_equal(scan.image, image)
    write_series(
        top / "DICOM" / "PAT1" / "ST1" / "SE2", image[:, :, :10], affine, uid="1.2.3.9", description="b"
    )
    with pytest.raises(InputError, match="2 DICOM series"):
        load_scan(top)
    assert load_scan(top, series="1.2.3.9").image.shape == (58, 72, 10)


def test_a_folder_of_several_series_asks_which(head, tmp_path, capsys, ls_bundle_path):
    image, affine = head
    folder = tmp_path / "study"
    write_series(folder, image, affine, uid="1.2.3.4.1", description="T1 sagittal")
    write_series(folder / "other", image[:, :, :20], affine, uid="1.2.3.4.2", description="PD axial")
    for path in (folder / "other").iterdir():
        shutil.move(str(path), str(folder / f"b_{path.name}"))
    with pytest.raises(
        InputError, match=r"2 DICOM series, choose one with --series UID: .*'T1 sagittal'.*'PD axi"
    ):
        load_scan(folder)
    assert load_scan(folder, series="1.2.3.4.2").image.shape == (58, 72, 20)
    assert load_scan(folder / "b_slice_003.dcm").image.shape == (58, 72, 20)  # a file picks its own series
    with pytest.raises(InputError, match="no DICOM series '9.9'"):
        load_scan(folder, series="9.9")
    out = tmp_path / "o.nii.gz"
    code = main(["segment", str(ls_bundle_path), "-i", str(folder), "-o", str(out), "--task", "brain"])
    assert code == 2 and "--series UID" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(skip=(20,)), "unevenly spaced"),
        (dict(repeat=(10,)), "several images lie at one position"),
    ],
    ids=["missing slice", "two images at one position"],
)
def test_a_series_that_is_not_one_even_stack_is_refused(head, tmp_path, change, message):
    image, affine = head
    with pytest.raises(InputError, match=message):
        load_scan(write_series(tmp_path / "dicom", image, affine, **change))


def test_a_sheared_series_is_refused(head, tmp_path):
    """A gantry tilt: each slice shifted sideways from the last (slices still parallel, evenly spaced)."""
    image, affine = head
    sheared = affine.copy()
    sheared[:3, 2] += affine[:3, 0] / np.linalg.norm(affine[:3, 0]) * 1.5  # 1.5 mm sideways per slice
    with pytest.raises(InputError, match="gantry tilt"):
        load_scan(write_series(tmp_path / "dicom", image, sheared))


def test_files_that_are_not_one_greyscale_scan_are_refused(tmp_path):
    with pytest.raises(InputError, match="no DICOM series in this folder or its sub-folders"):
        load_scan(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_scan(tmp_path / "nothing.nrrd")
    garbage = tmp_path / "broken.nrrd"
    garbage.write_bytes(b"NRRD0004\ntype: what\n\n\x00\x01")
    with pytest.raises(InputError, match="broken.nrrd: cannot read"):
        load_scan(garbage)
    huge = tmp_path / "huge.nrrd"  # a few bytes declaring 10^15 voxels: refused before allocating them
    huge.write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 100000 100000 100000\nendian: little\nencoding: raw\n\n\x00\x00"
    )
    with pytest.raises(InputError, match="more than any scan"):
        load_scan(huge)
    assert 100000**3 > MAX_SCAN_VOXELS
    colour = tmp_path / "colour.mha"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), str(colour))
    with pytest.raises(InputError, match="colour or vector image"):
        load_scan(colour)
    text = tmp_path / "notes.txt"
    text.write_text("not a scan")
    with pytest.raises(InputError, match="not a scan this reads"):
        load_scan(text)
    with pytest.raises(InputError, match="--series chooses a DICOM series"):
        load_scan(colour, series="1.2")
