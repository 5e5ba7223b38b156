"""Equal-compute accounting: every compared method spends the same number of training samples (steps x batch).

A method may spread its budget over several models (one model per task splits its steps between the tasks); the
ledger records each run's steps and batch and checks that every method of a comparison adds up to the same total.
"""

from __future__ import annotations

from dataclasses import dataclass

from LabelSharingSegLib.engine.errors import InputError


def split_steps(steps: int, parts: int) -> list[int]:
    """``steps`` shared between ``parts`` models as evenly as possible (the first ones get the remainder)."""
    if parts < 1 or steps < parts:
        raise InputError(f"a budget of {steps} steps cannot train {parts} models with at least one step each")
    base, extra = divmod(steps, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


@dataclass(frozen=True)
class Spend:
    comparison: str  # runs of one comparison must add up to the same total per method
    method: str
    run: str
    steps: int
    batch: int

    @property
    def samples(self) -> int:
        return self.steps * self.batch


class BudgetLedger:
    def __init__(self) -> None:
        self.entries: list[Spend] = []

    def record(self, comparison: str, method: str, run: str, steps: int, batch: int) -> None:
        self.entries.append(Spend(comparison, method, run, steps, batch))

    def totals(self, comparison: str) -> dict[str, int]:
        """Training samples per method of one comparison."""
        totals: dict[str, int] = {}
        for entry in self.entries:
            if entry.comparison == comparison:
                totals[entry.method] = totals.get(entry.method, 0) + entry.samples
        return totals

    def check_equal(self) -> None:
        """Refuse (before anything trains) a plan in which one comparison's methods spend different budgets."""
        for comparison in sorted({e.comparison for e in self.entries}):
            totals = self.totals(comparison)
            if len(set(totals.values())) > 1:
                spent = ", ".join(f"{m} {s}" for m, s in sorted(totals.items()))
                raise InputError(f"unequal budgets in {comparison!r} (samples per method: {spent})")

    def rows(self) -> list[dict]:
        return [
            {
                "comparison": e.comparison,
                "method": e.method,
                "run": e.run,
                "steps": e.steps,
                "batch": e.batch,
                "samples": e.samples,
            }
            for e in self.entries
        ]
