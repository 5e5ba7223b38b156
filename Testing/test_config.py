"""Typed configuration: round trips, old-schema bundles, bundle kinds, software versions and a table of bad
``bundle.json`` contents that must each be refused with one clear line naming the file and the field."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from LabelSharingSegLib import __version__
from LabelSharingSegLib.engine.bundle import MANIFEST, load_bundle
from LabelSharingSegLib.engine.bundle_kind import TASK_KINDS, BundleKind
from LabelSharingSegLib.engine.errors import BundleError, ConfigError
from LabelSharingSegLib.engine.manifest import SCHEMA_VERSION, Manifest
from LabelSharingSegLib.engine.network_config import UNetConfig
from LabelSharingSegLib.engine.preprocessing_config import IntensityConfig, Preprocessing
from lsseg_training.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "LabelSharingSeg" / "Resources" / "Bundles").glob("*/bundle.json"))
SCHEMA_1 = sorted((REPO / "Testing" / "data").glob("schema1_*.bundle.json"))


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "prep",
    [
        Preprocessing(spatial_dims=3, spacing=(1.0, 1.5, 2.0), patch_size=(64, 64, 32)),
        Preprocessing(
            spatial_dims=2,
            spacing=(0.5, 0.5),
            patch_size=(128, 96),
            orientation="LPS",
            overlap=0.25,
            intensity=IntensityConfig(mode="zscore", nonzero=True),
        ),
        Preprocessing(
            spatial_dims=3,
            spacing=(3, 3, 3),
            patch_size=(16, 16, 16),
            intensity=IntensityConfig(mode="percentile", lower=1.0, upper=99.0),
        ),
        Preprocessing(
            spatial_dims=3,
            spacing=(1, 1, 1),
            patch_size=(32, 32, 32),
            intensity=IntensityConfig(mode="ct_window", window=(-200, 300)),
        ),
        Preprocessing(
            spatial_dims=2, spacing=(1, 1), patch_size=(8, 8), intensity=IntensityConfig(mode="none")
        ),
    ],
    ids=["3d", "2d-nonzero", "percentile", "ct", "none"],
)
def test_preprocessing_round_trip(prep):
    data = prep.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON
    assert Preprocessing.from_dict(data) == prep
    assert set(data["intensity"]) == {"mode", *IntensityConfig._OF_MODE[prep.intensity.mode]}
    assert isinstance(prep.spacing[0], float) and prep.spacing == tuple(data["spacing"])


def test_preprocessing_fills_the_documented_defaults():
    prep = Preprocessing.from_dict({"spatial_dims": 3, "spacing": [2, 2, 2], "patch_size": [16, 16, 16]})
    assert (prep.orientation, prep.overlap, prep.intensity) == ("RAS", 0.5, IntensityConfig(mode="zscore"))
    assert prep.replace(overlap=0.0).overlap == 0.0
    with pytest.raises(ConfigError, match="preprocessing.overlap"):
        prep.replace(overlap=-0.1)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_shipped_bundles_load_unchanged(path):
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    raw = json.loads(path.read_text())
    bundle = load_bundle(path.parent)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # loading never rewrites a bundle
    assert bundle.kind == raw["kind"] and bundle.manifest.to_dict() == raw


@pytest.mark.parametrize("path", SCHEMA_1, ids=lambda p: p.name.split(".")[0])
def test_schema_1_manifests_read_as_before(path):
    """The manifests the first shipped bundles were written with (schema 1; kept in Testing/data since the
    shipped bundles were rewritten in schema 2) still read, and round-trip through the current schema."""
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == 1
    manifest = Manifest.from_dict(raw, str(path))
    assert manifest.kind == raw["kind"]
    assert manifest.preprocessing.to_dict()["spacing"] == raw["preprocessing"]["spacing"]
    assert manifest.network.channels == tuple(raw["network"]["channels"])
    assert manifest.network.out_channels == raw["network"]["out_channels"]
    assert [t.name for t in manifest.tasks] == [t["name"] for t in raw["tasks"]]
    # the typed manifest writes the current schema, which reads back to the same manifest
    data = manifest.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION == 2
    again = Manifest.from_dict(json.loads(json.dumps(data)))
    assert again == manifest
    assert (again.label_space is None) == (manifest.label_space is None)
    if again.label_space is not None:
        assert again.label_space.to_dict() == manifest.label_space.to_dict()
    if raw["network"]["arch"] == "unet":  # schema 1 stored the other architectures' keys; schema 2 does not
        assert {"num_tasks", "head_channels", "atlas_image_pool"} <= set(raw["network"])
        assert not {"num_tasks", "head_channels", "atlas_image_pool"} & set(data["network"])


def test_new_bundles_are_schema_2_with_software_versions(ls_bundle_path, lcs_bundle_path):
    import monai
    import numpy

    for path, arch in ((ls_bundle_path, "unet"), (lcs_bundle_path, "lcs")):
        raw = json.loads((path / MANIFEST).read_text())
        assert raw["schema_version"] == 2
        assert raw["software"] == {
            "labelsharingseg": __version__,
            "python": "{}.{}.{}".format(*sys.version_info[:3]),
            "torch": str(torch.__version__),
            "monai": monai.__version__,
            "numpy": numpy.__version__,
        }
        assert raw["network"]["arch"] == arch
        own = {"arch", "spatial_dims", "in_channels", "out_channels", "channels", "convs_per_level", "norm"}
        assert set(raw["network"]) == own | ({"atlas_image_pool"} if arch == "lcs" else set())
        assert f"labelsharingseg {__version__}" in load_bundle(path).summary()


def test_a_schema_1_copy_of_a_new_bundle_loads_the_same(ls_bundle_path, tmp_path):
    target = tmp_path / "old"
    shutil.copytree(ls_bundle_path, target)
    raw = json.loads((target / MANIFEST).read_text())
    old = {k: v for k, v in raw.items() if k != "software"}
    old["schema_version"] = 1
    old["network"] = {**raw["network"], "atlas_image_pool": "avg", "num_tasks": 1, "head_channels": 8}
    (target / MANIFEST).write_text(json.dumps(old))
    legacy, new = load_bundle(target), load_bundle(ls_bundle_path)
    assert legacy.network_config == new.network_config and legacy.preprocessing == new.preprocessing
    assert legacy.tasks == new.tasks and legacy.manifest.software == {}
    # the same keys in a schema 2 file are refused: schema 2 keeps each architecture's settings apart
    (target / MANIFEST).write_text(json.dumps({**old, "schema_version": 2}))
    with pytest.raises(ConfigError, match=r"network has unknown key\(s\) atlas_image_pool, head_channels"):
        load_bundle(target)


def test_manifest_round_trip_of_written_bundles(ls_bundle_path, lcs_bundle_path):
    for path in (ls_bundle_path, lcs_bundle_path):
        raw = json.loads((path / MANIFEST).read_text())
        manifest = Manifest.from_dict(raw)
        assert manifest.to_dict() == raw
        assert manifest.network == load_bundle(path).network_config


# ------------------------------------------------------------------------------------------ bundle kinds


def test_bundle_kind_is_defined_once_and_behaves_as_its_string():
    assert [k.value for k in BundleKind] == ["labelsharing", "individual", "multichannel", "dodnet", "lcs"]
    assert TASK_KINDS == tuple(k for k in BundleKind if k is not BundleKind.LCS)
    assert {k: k.arch for k in BundleKind} == {
        BundleKind.LABELSHARING: "unet",
        BundleKind.INDIVIDUAL: "unet",
        BundleKind.MULTICHANNEL: "unet",
        BundleKind.DODNET: "dodnet",
        BundleKind.LCS: "lcs",
    }
    lcs = BundleKind.parse("lcs")
    assert lcs == "lcs" and lcs.has_atlas and not lcs.segments_tasks
    assert f"{lcs}" == str(lcs) == "lcs" and json.dumps({"kind": lcs}) == '{"kind": "lcs"}'
    with pytest.raises(ConfigError, match="unknown bundle kind 'magic' .expected one of labelsharing, "):
        BundleKind.parse("magic")
    with pytest.raises(ConfigError, match="unknown bundle kind"):
        BundleKind.parse(["lcs"])


def test_version_has_one_source():
    text = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and 'attr = "LabelSharingSegLib.__version__"' in text
    assert "\nversion = " not in text.split("[tool.setuptools.dynamic]")[0]


def test_lsseg_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"lsseg {__version__}"


# ------------------------------------------------------------------------------------------ refusals


def _set(path: str, value):
    """A change to the manifest: set the value at a dotted path (list indices as numbers)."""

    def change(manifest: dict) -> dict:
        *parents, last = path.split(".")
        node = manifest
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
        return manifest

    return change


def _drop(path: str):
    def change(manifest: dict) -> dict:
        *parents, last = path.split(".")
        node = manifest
        for key in parents:
            node = node[key]
        del node[last]
        return manifest

    return change


RAW = "__raw__"  # placeholder replaced by raw JSON text that json.dumps cannot produce

# (bundle, change, raw JSON replacing RAW or None, expected message after "<file>: ")
BAD_MANIFESTS = [
    ("ls", _drop("preprocessing.spacing"), None, r"preprocessing\.spacing is missing"),
    ("ls", _drop("preprocessing.patch_size"), None, r"preprocessing\.patch_size is missing"),
    ("ls", _drop("preprocessing.spatial_dims"), None, r"preprocessing\.spatial_dims is missing"),
    (
        "ls",
        _set("preprocessing.patch_size", [0, 0, 0]),
        None,
        r"preprocessing\.patch_size must be a list of 3 integers from 1 to 2048",
    ),
    (
        "ls",
        _set("preprocessing.patch_size", [16, 16]),
        None,
        r"preprocessing\.patch_size must be a list of 3 integers",
    ),
    (
        "ls",
        _set("preprocessing.patch_size", [2048, 2048, 2048]),
        None,
        r"preprocessing\.patch_size .* voxels, more than",
    ),
    (
        "ls",
        _set("preprocessing.spacing", "2,2,2"),
        None,
        r"preprocessing\.spacing must be a list of 3 finite numbers",
    ),
    (
        "ls",
        _set("preprocessing.spacing", ["2", "2", "2"]),
        None,
        r"preprocessing\.spacing must be a list of 3 finite numbers",
    ),
    ("ls", _set("preprocessing.spacing", [2, 2, -1]), None, r"preprocessing\.spacing"),
    ("ls", _set("preprocessing.spacing", [2, 2, RAW]), "1e999", r"preprocessing\.spacing .*inf"),
    ("ls", _set("preprocessing.spacing", [2, 2, RAW]), "NaN", r"preprocessing\.spacing .*nan"),
    ("ls", _set("preprocessing.spatial_dims", 2), None, r"preprocessing\.spacing must be a list of 2"),
    ("ls", _set("preprocessing.spatial_dims", True), None, r"preprocessing\.spatial_dims must be an integer"),
    (
        "ls",
        _set("preprocessing.orientation", "RRS"),
        None,
        r"preprocessing\.orientation must be three axis codes",
    ),
    ("ls", _set("preprocessing.overlap", 1.5), None, r"preprocessing\.overlap must be a finite number"),
    ("ls", _set("preprocessing.spacng", [2, 2, 2]), None, r"preprocessing has unknown key\(s\) spacng"),
    (
        "ls",
        _set("preprocessing.patch_size", [16, 16, 18]),
        None,
        r"patch_size \[16, 16, 18\] must be divisible by the network's pooling factor 4",
    ),
    (
        "ls",
        _set("preprocessing.intensity", {"mode": "magic"}),
        None,
        r"preprocessing\.intensity\.mode must be one of",
    ),
    (
        "ls",
        _set("preprocessing.intensity", {"mode": "percentile", "lower": 90, "upper": 10}),
        None,
        r"lower percentile 90.0 must be below upper",
    ),
    (
        "ls",
        _set("preprocessing.intensity", {"mode": "ct_window", "window": [5, 1]}),
        None,
        r"preprocessing\.intensity\.window",
    ),
    (
        "ls",
        _set("preprocessing.intensity", {"mode": "zscore", "nonzero": "yes"}),
        None,
        r"preprocessing\.intensity\.nonzero must be true or false",
    ),
    ("ls", _set("preprocessing", [1, 2]), None, r"preprocessing must be a JSON object"),
    (
        "ls",
        _set("network.channels", [5_000_000, 8, 16]),
        None,
        r"network\.channels must be a list of 2 to 8 integers from 1 to 4096",
    ),
    ("ls", _set("network.channels", [4096] * 8), None, r"parameters, more than the limit"),
    (
        "ls",
        _set("network.out_channels", 10**6),
        None,
        r"network\.out_channels must be an integer from 1 to 10000",
    ),
    ("ls", _set("network.out_channels", RAW), "4" + "0" * 5000, r"(not valid JSON|network\.out_channels)"),
    (
        "ls",
        _set("network.spatial_dims", 2),
        None,
        r"preprocessing\.spatial_dims 3 and network\.spatial_dims 2 disagree",
    ),
    ("ls", _set("network.norm", "group"), None, r"network\.norm must be one of instance, batch"),
    (
        "ls",
        _set("network.arch", "transformer"),
        None,
        r"network\.arch must be one of unet, unet_film, lcs, lcs_refine, dodnet",
    ),
    ("ls", _drop("network"), None, r"bundle\.json: network is missing"),
    (
        "ls",
        _set("tasks.0.labels.0.value", RAW),
        "1e999",
        r"tasks\[0\]\.labels\[0\]\.value must be an integer",
    ),
    ("ls", _set("tasks.0.labels.0.value", 1.5), None, r"tasks\[0\]\.labels\[0\]\.value must be an integer"),
    ("ls", _set("tasks.0.labels.0.value", True), None, r"tasks\[0\]\.labels\[0\]\.value must be an integer"),
    (
        "ls",
        _set("tasks.0.labels.0.value", 0),
        None,
        r"tasks\[0\]\.labels\[0\]\.value must be an integer from 1",
    ),
    ("ls", _set("tasks.0.labels.0.color", [RAW, 0, 0]), "1e999", r"tasks\[0\]\.labels\[0\]\.color"),
    ("ls", _set("tasks.0.labels.0.channel", 0), None, r"tasks\[0\]\.labels\[0\]\.channel"),
    ("ls", _set("tasks.0.labels.0.channel", 3), None, r"channels disagree with the label space"),
    ("ls", _set("tasks.0", {"labels": []}), None, r"tasks\[0\]\.name is missing"),
    ("ls", _set("tasks", {"a": 1}), None, r"tasks must be a list"),
    ("ls", _set("tasks", []), None, r"a labelsharing bundle must list at least one task"),
    ("ls", _set("label_space.n_shared", 10**9), None, r"label_space\.n_shared must be an integer"),
    ("ls", _drop("label_space"), None, r"needs its shared label space"),
    ("ls", _set("kind", "magic"), None, r"unknown bundle kind 'magic'"),
    ("ls", _set("kind", "lcs"), None, r"a lcs bundle needs a lcs or lcs_refine network, not unet"),
    ("ls", _set("kind", "dodnet"), None, r"a dodnet bundle needs a dodnet network"),
    ("ls", _set("schema_version", 99), None, r"schema version 99 is not supported"),
    ("ls", _set("schema_version", "2"), None, r"schema version '2' is not supported"),
    ("ls", _set("schema_version", True), None, r"schema version True is not supported"),
    ("ls", _set("format", "other"), None, r"not a LabelSharingSeg bundle manifest"),
    ("ls", _set("spacing", [1, 1, 1]), None, r"bundle\.json has unknown key\(s\) spacing"),
    ("ls", _set("training", "fast"), None, r"training must be a JSON object"),
    ("ls", _set("name", 5), None, r"name must be a text"),
    ("ls", _set("software", {"torch": 2}), None, r"software\.torch must be a text"),
    (
        "ls",
        _set("files", {"weights.safetensors": "abc"}),
        None,
        r"files\.weights\.safetensors must be a sha256",
    ),
    ("ls", _set("files", {"../weights.safetensors": "0" * 64}), None, r"files must be a plain file name"),
    ("ls", _set("reference", {"image": "/etc/passwd"}), None, r"reference\.image must be a plain file name"),
    ("lcs", _set("atlas.labels", "../atlas_labels.nii.gz"), None, r"atlas\.labels must be a plain file name"),
    ("lcs", _drop("atlas"), None, r"an lcs bundle must name its atlas"),
    ("lcs", _set("network.out_channels", 2), None, r"out_channels of an lcs network must be 1"),
    (
        "lcs",
        _set("network.atlas_image_pool", "median"),
        None,
        r"network\.atlas_image_pool must be one of avg, max",
    ),
    ("lcs", None, "[" * 100_000 + "]" * 100_000, r"not valid JSON .*RecursionError"),
    ("lcs", None, '{"a": ' * 100_000 + "1" + "}" * 100_000, r"not valid JSON .*RecursionError"),
    ("lcs", None, "[1, 2]", r"bundle\.json must be a JSON object"),
]


@pytest.fixture
def bad_bundle(request, ls_bundle_path, lcs_bundle_path, tmp_path):
    which, change, raw = request.param
    target = tmp_path / which
    shutil.copytree(ls_bundle_path if which == "ls" else lcs_bundle_path, target)
    manifest = json.loads((target / MANIFEST).read_text())
    if change is None:
        text = raw
    else:
        text = json.dumps(change(copy.deepcopy(manifest)))
        if raw is not None:
            text = text.replace(json.dumps(RAW), raw)
    (target / MANIFEST).write_text(text)
    return target


@pytest.mark.parametrize(
    "bad_bundle,message",
    [((which, change, raw), message) for which, change, raw, message in BAD_MANIFESTS],
    indirect=["bad_bundle"],
    ids=[f"{i:02d}-{row[3][:40]}" for i, row in enumerate(BAD_MANIFESTS)],
)
def test_bad_manifest_is_refused_with_one_line_naming_file_and_field(
    bad_bundle, message, monkeypatch, capsys
):
    manifest_file = str(bad_bundle / MANIFEST)
    before = (bad_bundle / MANIFEST).read_bytes()

    def no_allocation(*args, **kwargs):
        raise AssertionError("a network was allocated for a refused bundle")

    monkeypatch.setattr(torch.nn.Conv3d, "__init__", no_allocation)  # refused before anything is built
    with pytest.raises(BundleError, match=message) as error:
        load_bundle(bad_bundle)
    text = str(error.value)
    assert text.startswith(f"{manifest_file}: ") and "\n" not in text and len(text) < 400
    # `lsseg info` validates fully at load: exit 2, one line, no traceback, the file untouched
    assert main(["info", str(bad_bundle)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"lsseg: error: {manifest_file}: ") and captured.err.count("\n") == 1
    assert (bad_bundle / MANIFEST).read_bytes() == before


def test_the_refusal_table_covers_every_section():
    fields = " ".join(row[3] for row in BAD_MANIFESTS)
    for section in ("preprocessing", "network", "tasks", "label_space", "kind", "schema", "atlas", "files"):
        assert section in fields


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match=r"^preprocessing\.patch_size must be"):
        Preprocessing(spatial_dims=2, spacing=(1.0, 1.0), patch_size=(0, 0))
    with pytest.raises(ConfigError, match=r"^network\.channels must be"):
        UNetConfig(channels=(5_000_000, 8))
    with pytest.raises(ConfigError, match=r"^preprocessing\.intensity\.window"):
        IntensityConfig(mode="ct_window", window=(float("nan"), 1.0))


def test_manifest_cross_checks_on_construction(ls_bundle_path):
    from LabelSharingSegLib.engine.bundle import build_manifest
    from LabelSharingSegLib.engine.network_config import DoDNetConfig
    from lsseg_training.bundle_factory import per_task_rank_tasks

    tasks = per_task_rank_tasks({"a": {1: "x", 2: "y"}, "b": {1: "z"}})
    prep = load_bundle(ls_bundle_path).preprocessing
    ok = build_manifest(
        kind="dodnet", network=DoDNetConfig(out_channels=3, num_tasks=2), preprocessing=prep, tasks=tasks
    )
    assert ok.kind is BundleKind.DODNET and ok.software["labelsharingseg"] == __version__
    with pytest.raises(ConfigError, match=r"network\.num_tasks 3 != 2 tasks"):
        build_manifest(
            kind="dodnet", network=DoDNetConfig(out_channels=3, num_tasks=3), preprocessing=prep, tasks=tasks
        )
    with pytest.raises(ConfigError, match="invalid or shared output channels"):
        build_manifest(
            kind="dodnet", network=DoDNetConfig(out_channels=2, num_tasks=2), preprocessing=prep, tasks=tasks
        )
    with pytest.raises(ConfigError, match="a multichannel bundle needs a unet network, not dodnet"):
        build_manifest(
            kind="multichannel", network=DoDNetConfig(out_channels=3), preprocessing=prep, tasks=tasks
        )


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_info_json_prints_the_typed_manifest(path, capsys):
    assert main(["info", "--json", str(path.parent)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["schema_version"] == SCHEMA_VERSION
    assert Manifest.from_dict(printed) == load_bundle(path.parent).manifest
