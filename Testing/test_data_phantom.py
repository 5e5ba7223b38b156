"""`lsseg data phantom`: quick synthetic tasks, valid layout, distinct tasks, labels of clearly different sizes."""

from __future__ import annotations

import numpy as np
import pytest

from LabelSharingSegLib.engine.errors import DatasetError, InputError
from lsseg_training.cli import main as lsseg_main
from lsseg_training.data.phantom import make_phantom_tasks
from lsseg_training.datasets import check_dataset, load_case, read_dataset


def _features(image: np.ndarray) -> np.ndarray:
    """Whole-image statistics a network sees at once: level, spread, and roughness along each axis."""
    x = image[0].astype(np.float64)
    rough = [np.abs(np.diff(x, axis=a)).mean() for a in range(x.ndim) if x.shape[a] > 1]
    return np.array([np.median(x), x.std(), *rough])


def test_phantom_2d_tasks(tmp_path):
    folders = make_phantom_tasks(tmp_path, tasks=4, dims=2, size=48, cases=4, test_cases=2, seed=1)
    assert [f.name for f in folders] == [f"Dataset{900 + k}_Phantom{k}" for k in range(4)]
    label_counts = []
    for folder in folders:
        assert check_dataset(folder) == []
        ds = read_dataset(folder)
        assert ds.metadata["lsseg"]["spatial_dims"] == 2
        label_counts.append(len(ds.foreground_labels()))
        for case in ds.training + ds.test:
            image, label, _ = load_case(case)
            assert image.shape == (1, 48, 48, 1) and label.shape == (48, 48, 1)
            sizes = np.bincount(label.ravel())[1:]
            assert np.all(sizes > 0)
            assert (
                np.all(sizes[:-1] > 2 * sizes[1:]) or len(sizes) == 1
            )  # clearly different sizes, largest first
    assert label_counts == [3, 2, 1, 3]


def test_tasks_are_told_apart_from_the_image(tmp_path):
    folders = make_phantom_tasks(tmp_path, tasks=3, dims=2, size=48, cases=6, test_cases=4, seed=2)
    centroids, tests = [], []
    for folder in folders:
        ds = read_dataset(folder)
        centroids.append(np.mean([_features(load_case(c)[0]) for c in ds.training], axis=0))
        tests.append([_features(load_case(c)[0]) for c in ds.test])
    centroids = np.array(centroids)
    scale = centroids.std(axis=0) + 1e-6
    for task, features in enumerate(tests):
        for f in features:
            assert int(np.argmin(np.abs((centroids - f) / scale).sum(axis=1))) == task


def test_phantom_3d_and_determinism(tmp_path):
    a = make_phantom_tasks(tmp_path / "a", tasks=2, dims=3, size=24, cases=2, test_cases=1, seed=5)
    b = make_phantom_tasks(tmp_path / "b", tasks=2, dims=3, size=24, cases=2, test_cases=1, seed=5)
    c = make_phantom_tasks(tmp_path / "c", tasks=2, dims=3, size=24, cases=2, test_cases=1, seed=6)
    for fa, fb, fc in zip(a, b, c):
        assert check_dataset(fa) == []
        ia, la, _ = load_case(read_dataset(fa).training[0])
        ib, lb, _ = load_case(read_dataset(fb).training[0])
        ic, _, _ = load_case(read_dataset(fc).training[0])
        assert ia.shape == (1, 24, 24, 24)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
        assert not np.array_equal(ia, ic)


def test_phantom_cli_and_errors(tmp_path, capsys):
    assert (
        lsseg_main(
            [
                "data",
                "phantom",
                "--out",
                str(tmp_path),
                "--tasks",
                "2",
                "--cases",
                "2",
                "--test-cases",
                "1",
                "--size",
                "32",
            ]
        )
        == 0
    )
    assert "Wrote 2 phantom task folder(s)" in capsys.readouterr().out
    assert (
        lsseg_main(
            ["data", "check", str(tmp_path / "Dataset900_Phantom0"), str(tmp_path / "Dataset901_Phantom1")]
        )
        == 0
    )
    with pytest.raises(DatasetError, match="--force"):
        make_phantom_tasks(tmp_path, tasks=1, cases=1)
    make_phantom_tasks(tmp_path, tasks=1, cases=3, size=32, overwrite=True)
    assert len(read_dataset(tmp_path / "Dataset900_Phantom0").training) == 3
    with pytest.raises(InputError):
        make_phantom_tasks(tmp_path / "x", tasks=1, dims=4)
    with pytest.raises(InputError):
        make_phantom_tasks(tmp_path / "x", tasks=0)
    with pytest.raises(InputError):
        make_phantom_tasks(tmp_path / "x", tasks=1, size=4)
