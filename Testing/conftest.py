"""Shared fixtures: small real bundles written through the engine (random weights), built once per session."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from LabelSharingSegLib.engine.labels import LabelInfo  # noqa: E402
from LabelSharingSegLib.engine.labelspace import SharedLabelSpace, TaskSizes  # noqa: E402

TINY_CHANNELS = (4, 8, 16)  # pooling factor 4: keeps CPU tests fast


@pytest.fixture(autouse=True)
def registration_cache(tmp_path_factory, monkeypatch):
    """Every test starts with empty registration caches of its own (never the user's ~/.cache); subprocesses
    (the worker, torchrun) inherit the folder through the environment."""
    from LabelSharingSegLib.engine import registration_cache as cache

    folder = tmp_path_factory.mktemp("registrations")
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(folder))
    cache.clear_memory()
    yield folder
    cache.clear_memory()


def tiny_label_space() -> SharedLabelSpace:
    return SharedLabelSpace.build(
        [
            TaskSizes("organs", {1: "liver", 2: "kidney"}, {1: 0.7, 2: 0.3}),
            TaskSizes(
                "brain", {1: "white matter", 2: "grey matter", 3: "ventricles"}, {1: 0.5, 2: 0.4, 3: 0.1}
            ),
        ]
    )


def atlas_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[LabelInfo]]:
    """A small synthetic atlas: image, label map with three blobs, affine (2 mm, RAS, centred), labels."""
    shape = (24, 28, 20)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    labels = np.zeros(shape, np.int16)
    labels[np.linalg.norm(grid - np.array([8, 10, 10])[:, None, None, None], axis=0) < 6] = 1
    labels[np.linalg.norm(grid - np.array([16, 18, 10])[:, None, None, None], axis=0) < 4] = 2
    labels[4:8, 20:25, 4:8] = 3
    rng = np.random.default_rng(0)
    image = (labels * 30.0 + 20.0 + rng.normal(0, 2, shape)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-24.0, -28.0, -20.0]
    names = [
        LabelInfo(1, "left blob", (0.9, 0.2, 0.2)),
        LabelInfo(2, "right blob", (0.2, 0.8, 0.2)),
        LabelInfo(3, "box", (0.2, 0.3, 0.9)),
    ]
    return image, labels, affine, names


@pytest.fixture(scope="session")
def ls_bundle_path(tmp_path_factory):
    """A randomly initialised 3D label-sharing bundle with two tasks ('organs': 2 labels, 'brain': 3)."""
    from lsseg_training.bundle_factory import labelsharing_tasks, make_preprocessing, write_task_bundle

    space = tiny_label_space()
    prep = make_preprocessing(3, [2.0, 2.0, 2.0], [16, 16, 16], factor=4)
    out = tmp_path_factory.mktemp("bundles") / "labelsharing"
    return write_task_bundle(
        out,
        "labelsharing",
        labelsharing_tasks(space),
        prep,
        channels=TINY_CHANNELS,
        label_space=space,
        name="tiny label sharing",
        seed=1,
    )


@pytest.fixture(scope="session")
def lcs_bundle_path(tmp_path_factory):
    """A randomly initialised 3D LCS bundle whose atlas is :func:`atlas_volume`."""
    from lsseg_training.bundle_factory import make_preprocessing, write_lcs_bundle

    image, labels, affine, names = atlas_volume()
    prep = make_preprocessing(3, [2.0, 2.0, 2.0], [16, 16, 16], factor=4)
    out = tmp_path_factory.mktemp("bundles") / "lcs"
    return write_lcs_bundle(
        out, image, labels, affine, names, prep, channels=TINY_CHANNELS, name="tiny lcs", seed=2
    )
