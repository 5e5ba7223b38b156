"""Label-space invariants (property tests on random tasks), placement and widening."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from LabelSharingSegLib.engine.errors import LabelSpaceError
from LabelSharingSegLib.engine.labelspace import (
    SharedLabelSpace,
    TaskSizes,
    average_relative_sizes,
    relative_sizes_of_case,
)


@st.composite
def task_sizes(draw, name=None, max_labels=8):
    n = draw(st.integers(1, max_labels))
    values = draw(st.lists(st.integers(1, 300), min_size=n, max_size=n, unique=True))
    # coarse sizes make ties likely, which exercises deterministic tie-breaking
    sizes = draw(
        st.lists(st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]), min_size=n, max_size=n)
    )
    task = name or draw(st.text("abcdefgh", min_size=1, max_size=6))
    return TaskSizes(task, {v: f"L{v}" for v in values}, dict(zip(values, sizes)))


@st.composite
def task_lists(draw, min_tasks=1, max_tasks=5):
    k = draw(st.integers(min_tasks, max_tasks))
    return [draw(task_sizes(name=f"task{i}")) for i in range(k)]


def assert_invariants(space: SharedLabelSpace):
    for name in space.task_names:
        mapping = space.task_to_shared(name)
        assert set(mapping) == set(space.task(name).labels)  # mapping constraint
        assert len(set(mapping.values())) == len(mapping)  # uniqueness constraint
        assert all(1 <= s <= space.n_shared for s in mapping.values())
    for s in range(1, space.n_shared + 1):  # members() is the same table read the other way round
        members = space.members(s)
        assert members, f"shared label {s} holds no task label"
        assert all(space.task_to_shared(t)[v] == s for t, v in members.items())
    n_members = sum(len(space.members(s)) for s in range(1, space.n_shared + 1))
    assert n_members == sum(len(space.task_to_shared(t)) for t in space.task_names)


@settings(max_examples=150, deadline=None)
@given(task_lists())
def test_build_invariants_and_rank_order(tasks):
    space = SharedLabelSpace.build(tasks)
    assert space.n_shared == max(len(t.labels) for t in tasks)
    assert_invariants(space)
    for t in tasks:
        mapping = space.task_to_shared(t.task)
        ordered = sorted(t.labels, key=lambda v: mapping[v])
        sizes = [t.sizes[v] for v in ordered]
        assert sizes == sorted(sizes, reverse=True)  # largest first
        assert sorted(mapping.values()) == list(range(1, len(t.labels) + 1))


@settings(max_examples=60, deadline=None)
@given(task_lists(), st.randoms(use_true_random=False))
def test_build_is_deterministic_and_round_trips(tasks, random):
    a = SharedLabelSpace.build(tasks)
    shuffled = list(tasks)
    random.shuffle(shuffled)
    for order in (tasks[::-1], shuffled):  # the same tasks in another order give the same space
        b = SharedLabelSpace.build(order)
        assert b.n_shared == a.n_shared
        assert {t: b.task_to_shared(t) for t in b.task_names} == {
            t: a.task_to_shared(t) for t in a.task_names
        }
    assert SharedLabelSpace.build(tasks).to_dict() == a.to_dict()
    c = SharedLabelSpace.from_dict(a.to_dict())
    assert c.to_dict() == a.to_dict()
    assert "shared" in a.format_table()


@settings(max_examples=150, deadline=None)
@given(task_lists(), task_sizes(name="newtask", max_labels=10), st.booleans())
def test_placement_keeps_invariants_and_order(tasks, new, widen):
    space = SharedLabelSpace.build(tasks)
    if len(new.labels) > space.n_shared and not widen:
        with pytest.raises(LabelSpaceError, match=f"at most {space.n_shared} labels fit"):
            space.place_task(new)
        return
    placed = space.place_task(new, widen=widen)
    assert_invariants(placed)
    assert placed.n_shared == max(space.n_shared, len(new.labels))
    # the old tasks keep their assignment and the old space is untouched
    for t in tasks:
        assert placed.task_to_shared(t.task) == space.task_to_shared(t.task)
    assert "newtask" not in space.task_names
    mapping = placed.task_to_shared("newtask")
    matched = [v for v in new.ranked() if mapping[v] <= space.n_shared]
    positions = [mapping[v] for v in matched]
    assert positions == sorted(positions)  # order-preserving among labels on existing shared labels
    assert len(matched) == min(len(new.labels), space.n_shared)


def _brute_force_cost(new_sizes, ref_sizes):
    from itertools import combinations

    best = math.inf
    for combo in combinations(range(len(ref_sizes)), len(new_sizes)):
        cost = sum(abs(math.log(a) - math.log(ref_sizes[j])) for a, j in zip(new_sizes, combo))
        best = min(best, cost)
    return best


@settings(max_examples=80, deadline=None)
@given(task_lists(), task_sizes(name="newtask", max_labels=5))
def test_placement_minimises_total_size_mismatch(tasks, new):
    space = SharedLabelSpace.build(tasks)
    if len(new.labels) > space.n_shared:
        return
    placed = space.place_task(new)
    ref = space.reference_sizes()
    mapping = placed.task_to_shared("newtask")
    cost = sum(abs(math.log(new.sizes[v]) - math.log(ref[mapping[v]])) for v in new.labels)
    expected = _brute_force_cost(
        [new.sizes[v] for v in new.ranked()], [ref[s] for s in range(1, space.n_shared + 1)]
    )
    assert cost == pytest.approx(expected, abs=1e-9)


def test_placement_follows_size_table():
    space = SharedLabelSpace.build(
        [
            TaskSizes("a", {1: "big", 2: "mid", 3: "small"}, {1: 0.6, 2: 0.3, 3: 0.1}),
        ]
    )
    # a two-label task whose labels are 'mid'- and 'small'-sized goes to shared 2 and 3, not 1 and 2
    placed = space.place_task(TaskSizes("b", {7: "m", 9: "s"}, {7: 0.28, 9: 0.09}))
    assert placed.task_to_shared("b") == {7: 2, 9: 3}


def test_widening_appends_shared_labels():
    space = SharedLabelSpace.build([TaskSizes("a", {1: "x", 2: "y"}, {1: 0.8, 2: 0.2})])
    with pytest.raises(LabelSpaceError, match="at most 2 labels fit"):
        space.place_task(TaskSizes("b", {1: "p", 2: "q", 3: "r"}, {1: 0.7, 2: 0.2, 3: 0.1}))
    wide = space.place_task(TaskSizes("b", {1: "p", 2: "q", 3: "r"}, {1: 0.7, 2: 0.2, 3: 0.1}), widen=True)
    assert wide.n_shared == 3
    assert wide.task_to_shared("b")[1] == 1
    assert 3 in wide.task_to_shared("b").values()


def test_relative_sizes_definition():
    a = np.zeros((10, 10), int)
    a[:5] = 1  # 50 voxels
    a[5:6] = 2  # 10 voxels -> foreground 60
    b = np.zeros((10, 10), int)
    b[:2] = 1  # only label 1: 20/20
    assert relative_sizes_of_case(a) == pytest.approx({1: 50 / 60, 2: 10 / 60})
    sizes = average_relative_sizes([a, b], {1: "one", 2: "two"}, "t")
    assert sizes.sizes[1] == pytest.approx((50 / 60 + 1.0) / 2)
    assert sizes.sizes[2] == pytest.approx(10 / 60)  # averaged over the one case that has it


def test_bad_tasks_are_rejected_clearly():
    a = np.zeros((4, 4), int)
    a[0] = 1
    with pytest.raises(LabelSpaceError, match="never present in any case: 2 \\(two\\)"):
        average_relative_sizes([a], {1: "one", 2: "two"}, "t")
    with pytest.raises(LabelSpaceError, match="not declared"):
        average_relative_sizes([a * 5], {1: "one"}, "t")
    t = TaskSizes("same", {1: "x"}, {1: 1.0})
    with pytest.raises(LabelSpaceError, match="unique"):
        SharedLabelSpace.build([t, t])
    with pytest.raises(LabelSpaceError, match="already in the label space"):
        SharedLabelSpace.build([t]).place_task(t)
    with pytest.raises(LabelSpaceError):
        TaskSizes("z", {1: "x"}, {1: float("nan")})
    with pytest.raises(LabelSpaceError):
        SharedLabelSpace.from_dict({"format": "something else"})
