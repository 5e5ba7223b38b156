"""``add_task``: place a new task on a label-sharing bundle's size table and fine-tune into a new bundle (the old
bundle is only read), optionally replaying old tasks' data (Anand et al. 2024, incremental learning)."""

from __future__ import annotations

import math

import torch

from LabelSharingSegLib.engine.errors import InputError, LabelSpaceError
from LabelSharingSegLib.engine.modality import modality_mismatch
from LabelSharingSegLib.engine.network_config import DoDNetConfig, NetworkConfig
from LabelSharingSegLib.engine.networks import build_network

from . import bundle_factory as factory
from .datasets import load_case
from .distributed import distributed_session
from .planning import load_datasets, task_sizes
from .run_config import DEFAULT_STEPS, EQUAL_SHARE, AddTaskConfig
from .run_session import TrainedBundle, claim_outputs, print_summary
from .task_runs import TaskModelPlan, train_task_model
from .trainer import StepCallback


def widen_state(
    old_state: dict, new_model: torch.nn.Module, old_network: NetworkConfig | None = None
) -> dict:
    """Old weights in the new (possibly wider) network: equal shapes copied; the head's old channels and the old
    tasks' codes (``unet_film``) kept, the new task's code left at its neutral zero. A DoD-Net-style head
    (``--head``; ``old_network`` says its old shape) keeps every old generated weight in its new place."""
    state = new_model.state_dict()
    for key, value in old_state.items():
        if key not in state:
            continue
        if state[key].shape == value.shape:
            state[key] = value.clone()
        elif key.startswith("controller.") and isinstance(old_network, DoDNetConfig):
            state[key] = _widen_controller(value, state[key], old_network, new_model.config)
        elif (
            key.startswith(("head.", "task_scale.", "task_shift."))
            and value.shape[1:] == state[key].shape[1:]
        ):
            state[key][: value.shape[0]] = value
    return state


def _head_rows(old: DoDNetConfig, new: DoDNetConfig) -> torch.Tensor:
    """Where each of the old head's generated parameters sits in the new one (more output channels move the
    last layer's biases; the old channels keep their weights)."""
    rows, offset_new = [], 0
    for (o_old, i), (o_new, _) in zip(old.head_layer_shapes, new.head_layer_shapes):
        rows += [offset_new + k for k in range(o_old * i)]  # weights: (out, in) row-major, old outs first
        rows += [offset_new + o_new * i + k for k in range(o_old)]  # biases
        offset_new += o_new * i + o_new
    return torch.tensor(rows, dtype=torch.int64)


def _widen_controller(old: torch.Tensor, fresh: torch.Tensor, old_cfg: DoDNetConfig, new_cfg) -> torch.Tensor:
    """The controller (weight or bias) of a head with more tasks and/or output channels: old rows moved to their
    new places, old columns kept, the new task's column the mean of the old tasks' (an average task to start
    from); parameters of new output channels keep their fresh initialisation."""
    out = fresh.clone()
    rows = _head_rows(old_cfg, new_cfg)
    if old.ndim == 1:  # bias
        out[rows] = old
        return out
    if "task" not in old_cfg.controller_inputs:  # the columns are unchanged
        out[rows] = old
        return out
    image = old_cfg.channels[-1] if "image" in old_cfg.controller_inputs else 0
    columns = torch.cat(
        [old, old[:, image:].mean(dim=1, keepdim=True).expand(-1, new_cfg.num_tasks - old_cfg.num_tasks)], 1
    )
    out[rows] = columns
    return out


def replay_weights(
    new_task: str, replayed: dict[str, int], share: float | str | None, task_sampling: str
) -> dict[str, float] | None:
    """How often each task is drawn when the new task is fine-tuned with replay: the new task ``share`` of the
    samples, the replayed tasks (name -> label count) the rest between them, equally or, with ``--task-sampling
    labels``, in proportion to their label counts. None (every task by ``--task-sampling``, the new one
    included) for no replay or EQUAL_SHARE."""
    if share is None or share == EQUAL_SHARE or not replayed:
        return None
    old = {t: float(n) if task_sampling == "labels" else 1.0 for t, n in replayed.items()}
    total = sum(old.values())
    return {new_task: float(share), **{t: (1.0 - share) * w / total for t, w in old.items()}}


def new_task_fraction(
    new_labels: int, replayed: dict[str, int], share: float | str | None, task_sampling: str
) -> float:
    """The fraction of the add-task samples that are the new task's (replayed: task name -> label count)."""
    if not replayed:
        return 1.0
    if share is not None and share != EQUAL_SHARE:
        return float(share)
    if task_sampling == "labels":
        return new_labels / (new_labels + sum(replayed.values()))
    return 1.0 / (1 + len(replayed))


def steps_for_samples(steps: int, fraction: float) -> int:
    """Steps at which a task drawn for ``fraction`` of the samples gets as many as in ``steps`` steps of its own."""
    return math.ceil(round(steps / fraction, 6))


def add_task(config: AddTaskConfig, on_step: StepCallback | None = None) -> TrainedBundle:
    from LabelSharingSegLib.engine.bundle import load_bundle

    settings = config.settings
    if settings.head is not None or settings.task_film or settings.label_mapping != "rank":
        raise InputError(
            "--head, --task-film and --label-mapping choose a new network; add-task keeps the bundle's network"
        )
    checkpoint_dir = claim_outputs(config.out, settings)
    bundle = load_bundle(config.bundle)
    if bundle.kind != "labelsharing":
        raise InputError(f"{config.bundle}: add-task needs a labelsharing bundle, not {bundle.kind}")
    new = load_datasets([config.data])[0]
    replay = load_datasets(config.replay) if config.replay else []
    for d in replay:
        if d.task_name() not in bundle.task_names():
            raise InputError(
                f"--replay {d.root}: task {d.task_name()!r} is not in the bundle "
                f"(its tasks: {', '.join(bundle.task_names())})"
            )
    expected = bundle.preprocessing.scan_modality
    problem = modality_mismatch(load_case(new.training[0])[0], expected)
    if problem is not None:
        raise InputError(
            f"{new.root}: its case {new.training[0].case_id!r} {problem}, while {config.bundle} was trained "
            f"on {expected} scans; a task joins a bundle of its own kind of scan"
        )
    if new.task_name() in bundle.task_names():
        raise LabelSpaceError(
            f"task {new.task_name()!r} is already in {config.bundle}; rename the new dataset"
        )
    space = bundle.label_space.place_task(task_sizes(new), widen=config.widen)
    colors = {t.name: {label.value: label.color for label in t.labels} for t in bundle.tasks}
    network = bundle.network_config.replace(out_channels=space.n_shared + 1)
    if network.TAKES_TASK:  # a task code per task (unet_film, --head): one more for the new task
        network = network.replace(num_tasks=len(space.task_names))
    # the old tasks keep their planes and regions; the new one brings its dataset's
    slicing = {t.name: (t.plane, t.region_mm) for t in bundle.tasks} | {
        new.task_name(): factory.dataset_slicing(new)
    }
    share = config.share()
    replayed = {d.task_name(): len(bundle.task(d.task_name()).labels) for d in replay}
    weights = replay_weights(new.task_name(), replayed, share, settings.task_sampling)
    fraction = new_task_fraction(len(new.foreground_labels()), replayed, share, settings.task_sampling)
    if settings.steps is None and settings.epochs is None:
        # The new task gets the samples a model of its own gets by default, so with replay the run is longer.
        # At the same steps as its own model it trailed that model by up to 0.1; with its samples matched it was
        # within 0.03 on every seed and the old tasks lost nothing (docs/EXPERIMENTS.md, "Incremental learning").
        settings = settings.with_changes(steps=steps_for_samples(DEFAULT_STEPS, fraction))
    # recorded (run identity, bundle) only when the samples are not drawn as before the option existed, so
    # add-task runs started then still resume
    extra = {"base_bundle": bundle.bundle_id} | ({"new_task_share": share} if weights else {})
    plan = TaskModelPlan(
        "labelsharing",
        factory.with_slicing(factory.labelsharing_tasks(space, colors), slicing),
        space,
        prep=bundle.preprocessing,
        network=network,
        init_state=widen_state(bundle.state_dict, build_network(network), bundle.network_config),
        identity_extra=extra,
        reference=bundle.reference_image() if bundle.has_reference() else None,
        task_weights=weights,
    )
    with distributed_session(settings.device, settings.threads) as ctx:
        if ctx.is_main and not settings.quiet:
            print(space.format_table())
            if weights:
                old = ", ".join(f"{t} {w:.0%}" for t, w in weights.items() if t != new.task_name())
                print(f"Replay: {new.task_name()} {share:.0%} of the samples; replayed tasks {old}")
            if replay and settings.steps is not None:
                print(f"{settings.steps} steps; {fraction:.0%} of the samples are the new task's")
        trained = train_task_model(
            plan, [new, *replay], settings, ctx, config.out, checkpoint_dir, on_step=on_step
        )
        print_summary(ctx, trained, f"\nOld bundle untouched: {config.bundle}")
        return trained
