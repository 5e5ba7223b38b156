"""The label-sharing method (Anand et al. 2024): per-task average relative sizes -> shared label space.

Definitions used throughout (also in README):

* **Relative size** of label ``v`` in one case = voxels labelled ``v`` / foreground voxels of that case
  (foreground = every voxel with a non-zero label).
* **Average relative size** of ``v`` in a task = mean of its relative sizes over the cases that contain ``v``
  (cases without ``v`` are skipped, so a label drawn only in some cases is not made to look small).
* **Shared label space**: each task's labels are sorted by average relative size, largest first (ties:
  smaller label value first, then name), and the label of rank ``r`` goes to shared label ``r + 1``. So
  ``n*`` = the largest task's label count, every task label sits in exactly one shared label (mapping
  constraint) and a shared label holds at most one label of each task (uniqueness constraint). Shared
  label 0 is background for every task.
* **Size table**: the reference size of a shared label is the geometric mean of its members' average
  relative sizes. A new task is placed on it (incremental learning) by an order-preserving assignment that
  minimises the total mismatch ``sum |log(size_new) - log(size_ref)|`` (log, because sizes span orders of
  magnitude); a task with more labels than ``n*`` may widen the space: its labels that fit best keep the
  order-preserving assignment and the others get new shared labels appended after ``n*``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .errors import LabelSpaceError

SPACE_FORMAT = "labelsharingseg.labelspace/1"


@dataclass(frozen=True)
class TaskSizes:
    """One task's labels (value -> name) and their average relative sizes (value -> size in (0, 1])."""

    task: str
    labels: dict[int, str]
    sizes: dict[int, float]

    def __post_init__(self):
        if not self.task or not isinstance(self.task, str):
            raise LabelSpaceError("a task needs a non-empty name")
        if not self.labels:
            raise LabelSpaceError(f"task {self.task!r} has no foreground labels")
        if 0 in self.labels:
            raise LabelSpaceError(
                f"task {self.task!r}: label value 0 is background and cannot be a task label"
            )
        if set(self.labels) != set(self.sizes):
            missing = sorted(set(self.labels) ^ set(self.sizes))
            raise LabelSpaceError(f"task {self.task!r}: labels and sizes disagree on values {missing}")
        for value, size in self.sizes.items():
            if not (isinstance(size, (int, float)) and math.isfinite(size) and 0.0 < size <= 1.0):
                raise LabelSpaceError(
                    f"task {self.task!r}: label {value} ({self.labels[value]!r}) has relative size {size!r}; "
                    "sizes must be in (0, 1] - is the label absent from every case?"
                )

    def ranked(self) -> list[int]:
        """Label values, largest average relative size first; ties by value then name (deterministic)."""
        return sorted(self.labels, key=lambda v: (-self.sizes[v], v, self.labels[v]))

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "labels": [
                {"value": v, "name": self.labels[v], "relative_size": self.sizes[v]}
                for v in sorted(self.labels)
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> TaskSizes:
        try:
            entries = data["labels"]
            return cls(
                str(data["task"]),
                {int(e["value"]): str(e["name"]) for e in entries},
                {int(e["value"]): float(e["relative_size"]) for e in entries},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LabelSpaceError(f"malformed task entry in label space: {exc!r}") from None


def relative_sizes_of_case(label_map: np.ndarray) -> dict[int, float]:
    """Relative size of every non-zero label in one case (voxels of the label / foreground voxels)."""
    values, counts = np.unique(np.asarray(label_map), return_counts=True)
    keep = values != 0
    foreground = int(counts[keep].sum())
    if foreground == 0:
        return {}
    return {int(v): float(c) / foreground for v, c in zip(values[keep], counts[keep])}


def average_relative_sizes(
    label_maps: Iterable[np.ndarray], labels: Mapping[int, str], task: str
) -> TaskSizes:
    """Average relative sizes of ``labels`` over ``label_maps`` (mean over the cases containing each label).

    Raises LabelSpaceError naming labels that occur in no case, or values that are not declared.
    """
    totals: dict[int, float] = {int(v): 0.0 for v in labels}
    hits: dict[int, int] = {int(v): 0 for v in labels}
    for index, label_map in enumerate(label_maps):
        for value, size in relative_sizes_of_case(label_map).items():
            if value not in totals:
                raise LabelSpaceError(
                    f"task {task!r}: case #{index} holds label value {value}, which is not declared"
                )
            totals[value] += size
            hits[value] += 1
    absent = [f"{v} ({labels[v]})" for v in sorted(hits) if hits[v] == 0]
    if absent:
        raise LabelSpaceError(
            f"task {task!r}: declared labels never present in any case: {', '.join(absent)}"
        )
    sizes = {v: totals[v] / hits[v] for v in totals}
    return TaskSizes(task, {int(v): str(n) for v, n in labels.items()}, sizes)


def _log_mismatch(a: float, b: float) -> float:
    return abs(math.log(a) - math.log(b))


class SharedLabelSpace:
    """Shared labels 1..n*, each holding at most one label per task, plus the per-task size tables.

    Immutable in use: :meth:`place_task` returns a new space and leaves this one untouched.
    """

    def __init__(
        self, tasks: Mapping[str, TaskSizes], assignment: Mapping[str, Mapping[int, int]], n_shared: int
    ):
        self._tasks = dict(tasks)
        self._assignment = {t: dict(m) for t, m in assignment.items()}
        self._n_shared = int(n_shared)
        self.validate()

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def build(cls, tasks: Iterable[TaskSizes], *, shuffle_seed: int | None = None) -> SharedLabelSpace:
        """Rank-match the tasks' labels (Anand et al. 2024, section 2.1). ``shuffle_seed``: each task's labels
        take the shared labels in a seeded random order instead (the control that measures the rank mapping)."""
        tasks = list(tasks)
        if not tasks:
            raise LabelSpaceError("a shared label space needs at least one task")
        names = [t.task for t in tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise LabelSpaceError(f"task names must be unique; repeated: {', '.join(duplicates)}")
        assignment = {t.task: {value: rank + 1 for rank, value in enumerate(t.ranked())} for t in tasks}
        if shuffle_seed is not None:
            rng = np.random.default_rng(shuffle_seed)
            for t in tasks:
                order = rng.permutation(len(t.labels)) + 1
                assignment[t.task] = {value: int(order[k]) for k, value in enumerate(t.ranked())}
        n_shared = max(len(t.labels) for t in tasks)
        return cls({t.task: t for t in tasks}, assignment, n_shared)

    def place_task(self, task: TaskSizes, *, widen: bool = False) -> SharedLabelSpace:
        """Place a new task on the stored size table (incremental learning); returns a new space."""
        if task.task in self._tasks:
            raise LabelSpaceError(f"task {task.task!r} is already in the label space; choose another name")
        ranked = task.ranked()
        n_new, n_old = len(ranked), self._n_shared
        if n_new > n_old and not widen:
            raise LabelSpaceError(
                f"task {task.task!r} has {n_new} labels but the shared space holds {n_old}: at most {n_old} "
                f"labels fit; pass widen=True (CLI: --widen) to append {n_new - n_old} new shared label(s)"
            )
        reference = self.reference_sizes()
        new_sizes = [task.sizes[v] for v in ranked]
        chosen = _order_preserving_assignment(new_sizes, [reference[s] for s in range(1, n_old + 1)])
        mapping: dict[int, int] = {}
        next_index = n_old + 1
        for position, value in enumerate(ranked):
            slot = chosen[position]
            if slot is None:  # more labels than shared labels: append
                mapping[value] = next_index
                next_index += 1
            else:
                mapping[value] = slot + 1
        tasks = dict(self._tasks)
        tasks[task.task] = task
        assignment = dict(self._assignment)
        assignment[task.task] = mapping
        return SharedLabelSpace(tasks, assignment, max(n_old, next_index - 1))

    # -- queries ------------------------------------------------------------------------------------------
    @property
    def n_shared(self) -> int:
        return self._n_shared

    @property
    def task_names(self) -> list[str]:
        return list(self._tasks)

    def task(self, name: str) -> TaskSizes:
        if name not in self._tasks:
            raise LabelSpaceError(f"unknown task {name!r}; known tasks: {', '.join(self._tasks) or 'none'}")
        return self._tasks[name]

    def task_to_shared(self, name: str) -> dict[int, int]:
        self.task(name)
        return dict(self._assignment[name])

    def shared_to_task(self, name: str) -> dict[int, int]:
        return {s: v for v, s in self.task_to_shared(name).items()}

    def members(self, shared_index: int) -> dict[str, int]:
        """Task -> label value held by one shared label."""
        return {t: v for t, m in self._assignment.items() for v, s in m.items() if s == shared_index}

    def reference_sizes(self) -> dict[int, float]:
        """Size table: geometric mean of member sizes per shared label; empty shared labels borrow their
        neighbours' (they can exist only after widening, which always fills them)."""
        table: dict[int, float] = {}
        for s in range(1, self._n_shared + 1):
            members = self.members(s)
            if members:
                logs = [math.log(self._tasks[t].sizes[v]) for t, v in members.items()]
                table[s] = math.exp(sum(logs) / len(logs))
        for s in range(1, self._n_shared + 1):
            if s not in table:
                table[s] = table.get(s - 1, 1.0)
        return table

    def validate(self) -> None:
        """Check the mapping and uniqueness constraints; raise LabelSpaceError on any violation."""
        if set(self._tasks) != set(self._assignment):
            raise LabelSpaceError("label space: tasks and assignments disagree")
        for name, mapping in self._assignment.items():
            labels = set(self._tasks[name].labels)
            if set(mapping) != labels:
                raise LabelSpaceError(
                    f"label space: task {name!r} does not map each of its labels exactly once"
                )
            targets = list(mapping.values())
            if len(set(targets)) != len(targets):
                raise LabelSpaceError(f"label space: task {name!r} puts two labels into one shared label")
            if any(not (1 <= s <= self._n_shared) for s in targets):
                raise LabelSpaceError(
                    f"label space: task {name!r} maps outside shared labels 1..{self._n_shared}"
                )

    # -- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": SPACE_FORMAT,
            "n_shared": self._n_shared,
            "definition": "relative size = label voxels / foreground voxels per case, averaged over cases "
            "containing the label; shared label = rank by size (largest first)",
            "tasks": [
                {
                    **self._tasks[t].to_dict(),
                    "shared": {str(v): s for v, s in sorted(self._assignment[t].items())},
                }
                for t in self._tasks
            ],
            "reference_sizes": {str(s): r for s, r in self.reference_sizes().items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> SharedLabelSpace:
        if not isinstance(data, Mapping) or data.get("format") != SPACE_FORMAT:
            raise LabelSpaceError(f"not a label space (expected format {SPACE_FORMAT!r})")
        try:
            tasks = {}
            assignment = {}
            for entry in data["tasks"]:
                sizes = TaskSizes.from_dict(entry)
                tasks[sizes.task] = sizes
                assignment[sizes.task] = {int(v): int(s) for v, s in entry["shared"].items()}
            return cls(tasks, assignment, int(data["n_shared"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LabelSpaceError(f"malformed label space: {exc!r}") from None

    def format_table(self) -> str:
        """Readable table: one row per shared label, one column per task (label name and relative size)."""
        tasks = self.task_names
        header = ["shared", "ref size"] + tasks
        rows = [header]
        reference = self.reference_sizes()
        for s in range(1, self._n_shared + 1):
            members = self.members(s)
            row = [str(s), f"{reference[s]:.4f}"]
            for t in tasks:
                if t in members:
                    v = members[t]
                    row.append(f"{self._tasks[t].labels[v]} [{v}] {self._tasks[t].sizes[v]:.4f}")
                else:
                    row.append("-")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _order_preserving_assignment(new_sizes: list[float], ref_sizes: list[float]) -> list[int | None]:
    """Monotone matching of ranked new labels onto ranked shared labels minimising total log mismatch.

    Returns, for each new label (in rank order), the 0-based shared position or None (no position left:
    the label will get an appended shared label). Strictly increasing positions keep the order and the
    uniqueness. When there are more new labels than positions, exactly ``len(new) - len(ref)`` labels are
    left unmatched, chosen to minimise the mismatch of the matched ones. Ties prefer earlier positions.
    """
    n, m = len(new_sizes), len(ref_sizes)
    skips_allowed = max(0, n - m)
    inf = float("inf")
    # cost[i][j][k]: best cost using first i new labels, first j positions, k skipped labels.
    # k is bounded by skips_allowed, which is usually 0, so this stays small.
    cost = [[[inf] * (skips_allowed + 1) for _ in range(m + 1)] for _ in range(n + 1)]
    choice: dict[tuple[int, int, int], tuple[int, int, int, int | None]] = {}
    for j in range(m + 1):
        cost[0][j][0] = 0.0
    for i in range(1, n + 1):
        for j in range(0, m + 1):
            for k in range(0, skips_allowed + 1):
                arg: tuple[int, int, int, int | None] | None = None
                best = inf
                if j >= 1 and cost[i][j - 1][k] < best:  # position j-1 left empty
                    best, arg = cost[i][j - 1][k], (i, j - 1, k, None)
                if j >= 1:
                    c = cost[i - 1][j - 1][k] + _log_mismatch(new_sizes[i - 1], ref_sizes[j - 1])
                    if c < best - 1e-12 or (arg is not None and arg[3] is None and abs(c - best) <= 1e-12):
                        best, arg = c, (i - 1, j - 1, k, j - 1)
                if k >= 1 and cost[i - 1][j][k - 1] < best - 1e-12:  # label i-1 unmatched
                    best, arg = cost[i - 1][j][k - 1], (i - 1, j, k - 1, -1)
                cost[i][j][k] = best
                if arg is not None:
                    choice[(i, j, k)] = arg
    if cost[n][m][skips_allowed] == inf:
        raise LabelSpaceError("internal error: no order-preserving placement found")
    result: list[int | None] = [None] * n
    state = (n, m, skips_allowed)
    while state[0] > 0:
        i, j, k = state
        pi, pj, pk, what = choice[(i, j, k)]
        if what is not None and what >= 0:
            result[i - 1] = what
        state = (pi, pj, pk)
    return result
