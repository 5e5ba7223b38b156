"""DICOM series written here as a scanner writes them (one file per slice, with position, orientation, UIDs,
description and modality), for the tests of reading scans (test_scan_io.py) and of Slicer's DICOM volumes
(test_scene_scan_header.py)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def itk_volume(image, affine):
    """``image`` (float [i, j, k], RAS affine) as an int16 SimpleITK volume (LPS, array [k, j, i])."""
    lps = _LPS @ affine
    volume = sitk.GetImageFromArray(image.astype(np.int16).transpose(2, 1, 0))
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    volume.SetSpacing([float(s) for s in spacing])
    volume.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    volume.SetOrigin([float(v) for v in lps[:3, 3]])
    return volume


def write_series(
    folder,
    image,
    affine,
    *,
    uid="1.2.826.0.1.3680043.2.1143.7",
    description="T1 test",
    modality="MR",
    skip=(),
    repeat=(),
):
    """Write ``image`` (float [i, j, k], RAS affine) as one DICOM file per slice k, as a scanner would: position
    and orientation of each slice, its number, the series' UID, description and modality."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = itk_volume(image, affine)
    direction = np.asarray(volume.GetDirection()).reshape(3, 3)
    spacing = volume.GetSpacing()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))
    slices = [k for k in range(image.shape[2]) if k not in skip] + list(repeat)
    for number, k in enumerate(slices):
        piece = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in (
            ("0008|0060", modality),
            ("0008|103e", description),
            ("0020|000d", "1.2.826.0.1.3680043.2.1143.1"),
            ("0020|000e", uid),
            ("0020|0013", str(number + 1)),
            ("0020|0032", "\\".join(f"{v:.6f}" for v in position)),
            ("0020|0037", orientation),
            ("0018|0050", f"{spacing[2]:.6f}"),
            ("0008|0018", f"{uid}.{number + 1}"),
        ):
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{number:03d}.dcm"))
        writer.Execute(piece)
    return folder
