"""Threads per training process: affinity cores shared by torchrun's local processes, with overrides."""

from __future__ import annotations

import sys

import pytest
import torch

from LabelSharingSegLib.engine.errors import InputError
from lsseg_training import threads
from lsseg_training.threads import configure_threads, threads_per_process


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("LSSEG_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    return monkeypatch


def test_cores_are_divided_between_local_ranks(clean_env):
    assert threads_per_process() == 16
    clean_env.setenv("LOCAL_WORLD_SIZE", "4")
    clean_env.setenv("OMP_NUM_THREADS", "1")  # torchrun's own setting is not what limits a rank
    assert threads_per_process() == 4
    clean_env.setenv("LOCAL_WORLD_SIZE", "32")
    assert threads_per_process() == 1  # never zero


def test_overrides_win_in_order(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_process() == 3  # the user's OMP setting outside torchrun
    clean_env.setenv("LSSEG_THREADS", "5")
    assert threads_per_process() == 5
    assert threads_per_process(2) == 2
    clean_env.setenv("LSSEG_THREADS", "many")
    with pytest.raises(InputError, match="LSSEG_THREADS"):
        threads_per_process()
    with pytest.raises(InputError, match="at least 1"):
        threads_per_process(0)


def test_configure_sets_torch_and_registration_threads(clean_env):
    import SimpleITK as sitk

    before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
        assert sitk.ImageRegistrationMethod().GetNumberOfThreads() == 1  # what a new registration gets
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])


def test_configure_without_simpleitk_sets_torch_threads(clean_env):
    """A GPU machine given only what training needs has no SimpleITK: no registration pool to size, no error."""
    before = torch.get_num_threads()
    clean_env.setitem(sys.modules, "SimpleITK", None)
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
