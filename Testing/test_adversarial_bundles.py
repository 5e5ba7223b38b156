"""Adversarial suite, bundles: hostile and broken bundle folders and zips, loaded through ``lsseg info``.

Each row is one hostile file; see Testing/adversarial.py for what every row checks. Variants are built once
from the tiny test bundles (folder copies whose bundle.json is edited and whose hashes are recomputed where
the row means the hash to match).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from adversarial import Case, Workspace, ids, run_case
from safetensors.torch import load_file, save_file

from LabelSharingSegLib.engine.bundle import zip_bundle

ESC = "\x1b"
ANSI_NAME = f"Innocent{ESC}[2J{ESC}[H{ESC}]0;owned-title\x07{ESC}[31mFAKE: bundle verified OK{ESC}[0m"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _variant(root: Path, base: Path, name: str, manifest=None, files=None, rehash: bool = True) -> Path:
    """Copy ``base`` to ``root/name``, change its files (``files(folder)``) and/or its bundle.json."""
    folder = root / name
    shutil.copytree(base, folder, symlinks=True)
    if files is not None:
        files(folder)
    data = json.loads((folder / "bundle.json").read_text())
    if rehash:
        data["files"] = {f: _sha(folder / f) for f in data["files"] if (folder / f).is_file()}
    if manifest is not None:
        manifest(data)
    (folder / "bundle.json").write_text(json.dumps(data, indent=1))
    return folder


def _set(path: str, value):
    """A manifest edit: set the key at a dotted ``path`` (list indices as numbers)."""

    def edit(data):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for key in parents:
            data = data[key]
        data[last] = value

    return edit


def _delete(path: str):
    def edit(data):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for key in parents:
            data = data[key]
        del data[last]

    return edit


def _weights(change):
    """A file edit on weights.safetensors: ``change(state_dict)`` then save (the hash is then recomputed)."""

    def edit(folder: Path):
        state = _read_weights(folder)
        change(state)
        save_file(state, str(folder / "weights.safetensors"))

    return edit


def _read_weights(folder: Path) -> dict:
    # copies: load_file maps the file, and rewriting a mapped file under its tensors crashes the process
    return {k: v.clone() for k, v in load_file(str(folder / "weights.safetensors")).items()}


def _first_float(state):
    return next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)


class _TouchOnUnpickle:
    """Unpickling this would create a marker file: proof that a pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            archive.writestr(info, data)
    return path


def _zip_member(name: str, mode: int | None = None) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("placeholder")
    info.filename = name  # set after construction: ZipInfo would tidy a hostile name
    if mode is not None:
        info.external_attr = mode << 16
    return info


def _declare_huge(path: Path) -> None:
    """Rewrite the central directory so every member claims ~4 GiB unpacked (a zip bomb's headers)."""
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        data[start + 24 : start + 28] = struct.pack("<I", 0xFFFFFFF0)
        start += 4
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def workspace_root(tmp_path_factory, ls_bundle_path, lcs_bundle_path):
    root = tmp_path_factory.mktemp("adversarial_bundles")
    b = root / "bundles"
    b.mkdir()
    ls = shutil.copytree(ls_bundle_path, b / "ls")
    lcs = shutil.copytree(lcs_bundle_path, b / "lcs")
    bundle_files = [f.name for f in ls.iterdir() if f.name != "bundle.json"]
    (root / "marker_dir").mkdir()
    marker = root / "marker_dir" / "pickle_ran"
    outside = root / "outside"
    outside.mkdir()
    shutil.copy(ls / "weights.safetensors", outside / "weights.safetensors")
    shutil.copy(ls / "bundle.json", outside / "bundle.json")

    def manifest_text(text: str):
        def edit(folder: Path):
            (folder / "bundle.json").write_text(text)

        return edit

    def raw(name: str, text: str | bytes) -> None:
        folder = shutil.copytree(ls, b / name)
        target = folder / "bundle.json"
        target.write_bytes(text if isinstance(text, bytes) else text.encode())

    raw("deep_json", "[" * 100_000 + "]" * 100_000)
    raw("deep_object", '{"a":' * 100_000 + "1" + "}" * 100_000)
    raw("huge_int", '{"format": "labelsharingseg.bundle", "schema_version": ' + "9" * 5000 + "}")
    raw("bad_json", '{"format": "labelsharingseg.bundle",')
    raw("not_object", "[1, 2, 3]")
    raw("not_utf8", b'{"name": "\xff\xfe"}')
    raw("empty_manifest", "")
    _variant(b, ls, "wrong_format", _set("format", "something.else"))
    _variant(b, ls, "future_schema", _set("schema_version", 99))
    _variant(b, ls, "unknown_kind", _set("kind", "magic"))
    _variant(b, ls, "no_network", _delete("network"))
    _variant(b, ls, "network_string", _set("network", "unet"))
    _variant(b, ls, "no_files", _delete("files"))
    _variant(b, ls, "weights_unlisted", lambda m: m["files"].pop("weights.safetensors"))
    _variant(b, ls, "wrong_arch", _set("network.arch", "lcs"))
    _variant(b, ls, "dims_disagree", _set("preprocessing.spatial_dims", 2))
    _variant(b, ls, "task_names_repeat", lambda m: m["tasks"].append(dict(m["tasks"][0])))
    _variant(b, ls, "label_value_zero", _set("tasks.0.labels.0.value", 0))
    _variant(b, ls, "label_channel_out_of_range", _set("tasks.0.labels.0.channel", 99))
    _variant(b, ls, "label_channel_string", _set("tasks.0.labels.0.channel", "one"))
    _variant(b, ls, "label_colour_out_of_range", _set("tasks.0.labels.0.color", [9, 9, 9]))
    _variant(b, ls, "no_tasks", _set("tasks", []))
    _variant(b, ls, "label_space_broken", _set("label_space", {"format": "nope"}))
    _variant(b, ls, "out_channels_disagree", _set("network.out_channels", 9))
    _variant(b, ls, "unsafe_name_dotdot", lambda m: m["files"].update({"../outside/bundle.json": "0" * 64}))
    _variant(
        b, ls, "unsafe_name_absolute", lambda m: m["files"].update({str(outside / "bundle.json"): "0" * 64})
    )
    _variant(b, ls, "hash_tampered", files=_weights(lambda s: s[_first_float(s)].add_(1.0)), rehash=False)
    _variant(b, ls, "hash_wrong_text", lambda m: m["files"].update({"weights.safetensors": "f" * 64}))
    _variant(b, ls, "weights_missing", files=lambda f: (f / "weights.safetensors").unlink(), rehash=False)
    _variant(b, ls, "weights_nan", files=_weights(lambda s: s[_first_float(s)].fill_(float("nan"))))
    _variant(b, ls, "weights_inf", files=_weights(lambda s: s[_first_float(s)].fill_(float("inf"))))
    _variant(
        b,
        ls,
        "weights_shape",
        files=_weights(lambda s: s.update({_first_float(s): torch.zeros(3, 3)})),
    )
    _variant(b, ls, "weights_extra", files=_weights(lambda s: s.update({"extra.weight": torch.zeros(2)})))
    _variant(b, ls, "weights_missing_tensor", files=_weights(lambda s: s.pop(_first_float(s))))
    _variant(
        b, ls, "weights_garbage", files=lambda f: (f / "weights.safetensors").write_bytes(os.urandom(256))
    )
    _variant(
        b,
        ls,
        "weights_pickle",
        files=lambda f: torch.save(_read_weights(f), f / "weights.safetensors"),
    )
    _variant(
        b,
        ls,
        "weights_pickle_payload",
        files=lambda f: (f / "weights.safetensors").write_bytes(pickle.dumps(_TouchOnUnpickle(str(marker)))),
    )
    _variant(
        b,
        ls,
        "symlink_outside",
        files=lambda f: (
            (f / "weights.safetensors").unlink(),
            (f / "weights.safetensors").symlink_to(outside / "weights.safetensors"),
        ),
        rehash=False,
    )
    _variant(
        b,
        ls,
        "symlink_inside",
        files=lambda f: (
            (f / "data").mkdir(),
            os.replace(f / "weights.safetensors", f / "data" / "w.safetensors"),
            (f / "weights.safetensors").symlink_to(Path("data") / "w.safetensors"),
        ),
        rehash=False,
    )
    manifest_link = shutil.copytree(ls, b / "symlink_manifest")
    (manifest_link / "bundle.json").unlink()
    (manifest_link / "bundle.json").symlink_to(outside / "bundle.json")
    _variant(b, ls, "ansi_name", _set("name", ANSI_NAME))
    _variant(b, ls, "ansi_description", _set("description", f"{ESC}]0;title\x07{ESC}[2Jhello"))
    _variant(b, ls, "ansi_label", _set("tasks.0.labels.0.name", f"liver{ESC}[31m red{ESC}[0m\x07"))
    _variant(b, ls, "ansi_training", _set("training", {"note": f"{ESC}[2Jcleared", "metrics": {"dice": 0.5}}))
    _variant(b, ls, "c1_controls", _set("name", "name\x9b2J with C1 CSI\x85"))
    _variant(b, lcs, "lcs_no_atlas", _delete("atlas"))
    _variant(
        b,
        lcs,
        "lcs_unnamed_atlas_label",
        files=lambda f: (f / "atlas_labels.csv").write_text("value,name,color\n1,left blob,#ff0000\n"),
    )
    _variant(b, lcs, "lcs_atlas_names_unhashed", lambda m: m["files"].pop("atlas_labels.csv"))
    _variant(b, lcs, "lcs_atlas_missing", files=lambda f: (f / "atlas_image.nii.gz").unlink(), rehash=False)
    _variant(
        b,
        lcs,
        "lcs_ansi_atlas_name",
        files=lambda f: (f / "atlas_labels.csv").write_text(
            f"value,name,color\n1,left{ESC}[2J blob,#ff0000\n2,right blob,#00ff00\n3,box,#0000ff\n"
        ),
    )

    zip_bundle(ls, b / "good.zip")
    members = [(name, (ls / name).read_bytes()) for name in ["bundle.json", *bundle_files]]
    _zip(b / "zip_slip.zip", [*members, (_zip_member("../evil.txt"), b"x")])
    _zip(b / "zip_slip_deep.zip", [*members, (_zip_member("sub/../../evil.txt"), b"x")])
    _zip(b / "zip_absolute.zip", [*members, (_zip_member("/tmp/lsseg_evil_absolute.txt"), b"x")])
    _zip(b / "zip_backslash.zip", [*members, (_zip_member("\\evil.txt"), b"x")])
    _zip(b / "zip_symlink.zip", [*members, (_zip_member("link", 0o120777), b"/etc/passwd")])
    _zip(b / "zip_no_manifest.zip", [("readme.txt", b"no bundle here")])
    _declare_huge(_zip(b / "zip_bomb.zip", [(f"part{i}.bin", b"0" * 100) for i in range(3)]))
    (b / "not_a_zip.zip").write_bytes(os.urandom(300))
    (b / "plain_file.txt").write_text("not a bundle")
    (b / "empty_folder").mkdir()
    return root


@pytest.fixture
def workspace(workspace_root, tmp_path):
    return Workspace(workspace_root, tmp_path)


def _info(name: str, error: str | None = None, stdout: str | None = None, json_flag: bool = False) -> Case:
    argv = ("info", f"{{in}}/bundles/{name}", *(("--json",) if json_flag else ()))
    return Case(
        f"info-{name}{'-json' if json_flag else ''}", argv, exit=2 if error else 0, error=error, stdout=stdout
    )


def _marker_absent(ws: Workspace) -> None:
    assert not (ws.inputs / "marker_dir" / "pickle_ran").exists(), "a pickle was executed"


CASES = [
    # what held and must keep holding
    _info("ls", stdout=r"Bundle: tiny label sharing"),
    _info("lcs", stdout=r"Atlas labels \(3\)"),
    _info("good.zip", stdout=r"Bundle: tiny label sharing"),
    _info("missing_bundle", r"bundle not found"),
    _info("plain_file.txt", r"a bundle is a folder or a \.zip"),
    _info("empty_folder", r"bundle\.json: missing"),
    _info("hash_tampered", r"sha256 does not match"),
    _info("hash_wrong_text", r"sha256 does not match"),
    _info("weights_missing", r"weights\.safetensors: missing from the bundle"),
    _info("weights_unlisted", r"does not list weights\.safetensors"),
    _info("weights_nan", r"holds NaN/Inf"),
    _info("weights_inf", r"holds NaN/Inf"),
    _info("weights_shape", r"has shape \(3, 3\)"),
    _info("weights_extra", r"tensors do not match the network config"),
    _info("weights_missing_tensor", r"tensors do not match the network config"),
    _info("weights_garbage", r"not a valid safetensors file"),
    _info("weights_pickle", r"not a valid safetensors file"),
    Case(
        "info-weights_pickle_payload",
        ("info", "{in}/bundles/weights_pickle_payload"),
        exit=2,
        error=r"not a valid safetensors file",
        check=_marker_absent,
    ),
    _info("unsafe_name_dotdot", r"unsafe file name|must be a plain file name inside the bundle"),
    _info("unsafe_name_absolute", r"unsafe file name|must be a plain file name inside the bundle"),
    _info("zip_slip.zip", r"refusing unsafe archive member '\.\./evil\.txt'"),
    _info("zip_slip_deep.zip", r"refusing unsafe archive member"),
    _info("zip_absolute.zip", r"refusing unsafe archive member '/tmp"),
    _info("zip_backslash.zip", r"refusing unsafe archive member"),
    _info("zip_symlink.zip", r"refusing unsafe archive member 'link'"),
    _info("zip_bomb.zip", r"unpacks to more than 4 GiB"),
    _info("zip_no_manifest.zip", r"holds no bundle\.json"),
    _info("not_a_zip.zip", r"not a readable zip archive"),
    _info("wrong_format", r"not a LabelSharingSeg bundle manifest"),
    _info("future_schema", r"schema version 99 is not supported"),
    _info("unknown_kind", r"unknown bundle kind 'magic'"),
    _info("no_network", r"missing or malformed 'network'|network is missing"),
    _info("network_string", r"missing or malformed 'network'|network must be a JSON object"),
    _info("no_files", r"missing or malformed 'files'|does not list weights\.safetensors"),
    _info("wrong_arch", r"needs a unet network|out_channels of an lcs network must be 1"),
    _info("dims_disagree", r"disagree on spatial_dims|spacing must be a list of 2"),
    _info("task_names_repeat", r"task names repeat"),
    _info("label_value_zero", r"repeated or non-positive label values|value must be an integer from 1"),
    _info("label_channel_out_of_range", r"invalid or shared output channels"),
    _info("label_channel_string", r"malformed task entry|channel must be an integer"),
    _info("label_colour_out_of_range", r"malformed task entry|color must be a list of 3 finite numbers"),
    _info("no_tasks", r"must list at least one task"),
    _info("label_space_broken", r"label space invalid|label_space\.n_shared must be"),
    _info(
        "out_channels_disagree",
        r"out_channels is 9 but the label space needs 4|9 outputs but the label space needs 4",
    ),
    _info("bad_json", r"not valid JSON"),
    _info("not_object", r"must (hold|be) a JSON object"),
    _info("empty_manifest", r"not valid JSON"),
    _info("lcs_no_atlas", r"must name its atlas image, labels and names"),
    _info("lcs_unnamed_atlas_label", r"atlas label values without a name"),
    _info("lcs_atlas_names_unhashed", r"files not hashed: atlas_labels\.csv"),
    _info("lcs_atlas_missing", r"atlas_image\.nii\.gz: missing from the bundle"),
    # fixed in issue 14
    _info("deep_json", r"nested too deeply"),
    _info("deep_object", r"nested too deeply"),
    _info("huge_int", r"not valid JSON \(integer with 5000 digits\)"),
    _info("not_utf8", r"not UTF-8 text"),
    _info("symlink_outside", r"weights\.safetensors: is a link to a file outside the bundle"),
    _info("symlink_manifest", r"bundle\.json: is a link to a file outside the bundle"),
    _info("symlink_inside", stdout=r"Bundle: tiny label sharing"),
    _info("ansi_name", stdout=r"Bundle: InnocentFAKE: bundle verified OK  \(kind"),
    _info("ansi_name", stdout=r"\\u001b\[2J", json_flag=True),
    _info("ansi_description", stdout=r"hello"),
    _info("ansi_label", stdout=r"liver red"),
    _info("ansi_training", stdout=r"note: cleared"),
    _info("c1_controls", stdout=r"name2J with C1 CSI"),
    _info("lcs_ansi_atlas_name", stdout=r"left blob"),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bundle_row(case: Case, workspace, capsys, monkeypatch):
    run_case(case, workspace, capsys, monkeypatch)
