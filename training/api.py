"""The training API: typed run configurations in, bundles out. The command line, the demo, experiments and tests
all call these; nothing here reads ``sys.argv``.

    from lsseg_training.api import TaskRunConfig, TrainSettings, run_training
    run_training(TaskRunConfig("labelsharing", data=[a, b], out=Path("ls"), settings=TrainSettings(steps=500)))

Each run raises an error of the project's family (``LabelSharingSegError``) with one clear line on bad input,
``TrainingInterrupted`` after Ctrl-C (a checkpoint is saved; ``resume=True`` continues) and returns the bundles
it wrote. ``on_step(StepEvent)`` is called after every optimiser step on every rank.
"""

from __future__ import annotations

from .add_task import add_task
from .lcs_run import train_lcs
from .run_config import AddTaskConfig, LCSRunConfig, RunConfig, TaskRunConfig, TrainSettings
from .run_session import TrainedBundle
from .task_runs import train_tasks
from .trainer import StepCallback, StepEvent, TrainingError, TrainingInterrupted


def run_training(config: RunConfig, on_step: StepCallback | None = None) -> list[TrainedBundle]:
    """Run whichever training ``config`` describes; the bundles written (``individual``: one per task)."""
    if isinstance(config, TaskRunConfig):
        return train_tasks(config, on_step)
    if isinstance(config, LCSRunConfig):
        return [train_lcs(config, on_step)]
    if isinstance(config, AddTaskConfig):
        return [add_task(config, on_step)]
    raise TypeError(f"not a run configuration: {type(config).__name__}")


__all__ = [
    "AddTaskConfig",
    "LCSRunConfig",
    "RunConfig",
    "StepEvent",
    "TaskRunConfig",
    "TrainSettings",
    "TrainedBundle",
    "TrainingError",
    "TrainingInterrupted",
    "add_task",
    "run_training",
    "train_lcs",
    "train_tasks",
]
