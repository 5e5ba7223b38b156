"""``train_tasks``: label sharing (Anand et al. 2024) and the task baselines (individual, multichannel, DoD-Net)
over several datasets, and the one-model part that ``add_task`` shares."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.labelspace import SharedLabelSpace
from LabelSharingSegLib.engine.network_config import NetworkConfig
from LabelSharingSegLib.engine.networks import build_network
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing

from . import bundle_factory as factory
from .checkpoint import LAST
from .datasets import NnUNetDataset
from .distributed import DistContext, distributed_session
from .methods import TaskMethod
from .planning import load_datasets, plan_preprocessing, reference_image, split_cases, task_infos
from .run_config import DEFAULT_DICE_POOLING, TaskRunConfig, TrainSettings
from .run_identity import RunIdentity
from .run_session import (
    TrainedBundle,
    check_checkpoint_dir,
    check_new_output,
    claim_folder,
    claim_outputs,
    elapsed_share,
    mark_bundle_written,
    print_summary,
    run_loop,
    train_options,
    training_meta,
)
from .samples import ToModelGrid, cache_items
from .trainer import StepCallback
from .validation_labels import validation_labels


@dataclass(frozen=True)
class TaskModelPlan:
    """One network over some tasks: what ``train_task_model`` needs besides the datasets."""

    kind: str
    tasks: list
    space: SharedLabelSpace | None = None
    prep: Preprocessing | None = None  # None: planned from the data
    network: NetworkConfig | None = None  # None: from the settings' channels
    init_state: dict | None = None  # weights to start from (add-task)
    identity_extra: dict | None = None  # more run identity (add-task's base bundle)
    reference: tuple | None = None  # (image, affine) stored in the bundle
    reference_path: Path | None = None  # or a file to read it from
    # how often each task is drawn, by name (None: by --task-sampling)
    task_weights: dict[str, float] | None = None


def train_task_model(
    plan: TaskModelPlan,
    datasets: list[NnUNetDataset],
    settings: TrainSettings,
    ctx: DistContext,
    out: Path,
    checkpoint_dir: Path,
    *,
    time_limit_s: float | None = None,
    on_step: StepCallback | None = None,
) -> TrainedBundle:
    """Train one network on ``datasets`` and write its bundle to ``out`` (rank 0)."""
    network = plan.network or factory.network_config_for(
        plan.kind,
        plan.tasks,
        2,
        list(settings.channels),
        task_film=settings.task_film,
        head=settings.head_for(plan.kind),
    )
    prep = plan.prep or plan_preprocessing(settings, datasets, network.downsample_factor)
    network = network.replace(spatial_dims=prep.spatial_dims)
    reference = plan.reference if plan.reference is not None else reference_image(plan.reference_path, prep)
    index_of = {t.name: t.index for t in plan.tasks}
    train_cases, val_cases = [], []
    for d in datasets:
        tr, va = split_cases(d.training, settings.val_fraction, settings.seed)
        train_cases += [(c, index_of[d.task_name()]) for c in tr]
        val_cases += [(c, index_of[d.task_name()]) for c in va]
    options = train_options(settings, checkpoint_dir, len(train_cases), ctx.world_size, time_limit_s)
    val_labels = {
        t.index: validation_labels(t.channels, settings.val_labels, settings.seed) for t in plan.tasks
    }
    if plan.task_weights is not None:
        weights = {index_of[name]: float(w) for name, w in plan.task_weights.items()}
    elif settings.task_sampling == "labels":
        weights = {t.index: float(len(t.labels)) for t in plan.tasks}
    else:
        weights = None
    pooling = settings.dice_pooling or DEFAULT_DICE_POOLING
    method = TaskMethod(plan.kind, plan.tasks, network, prep, val_labels, weights, pooling)
    to_grid = ToModelGrid(prep)
    items = method.prepare_items(cache_items(train_cases, to_grid, settings.cache_workers))
    val_items = (
        method.prepare_items(cache_items(val_cases, to_grid, settings.cache_workers)) if ctx.is_main else []
    )
    method.make_sampler(
        items, settings.foreground_prob, settings.augment, settings.pipeline_settings(), ctx.device
    )
    torch.manual_seed(settings.seed)
    model = build_network(network)
    if plan.init_state is not None:
        model.load_state_dict(plan.init_state)
    identity = RunIdentity(
        method=plan.kind,
        network=network,
        preprocessing=prep,
        train_cases=tuple(c.case_id for c, _ in train_cases),
        val_cases=tuple(c.case_id for c, _ in val_cases),
        settings=settings,
        world_size=ctx.world_size,
        method_specific={
            "tasks": [t.to_dict() for t in plan.tasks],
            "foreground_prob": settings.foreground_prob,
            # recorded only when not the default, so runs started before the option existed still resume
            **({} if settings.task_sampling == "uniform" else {"task_sampling": settings.task_sampling}),
            # recorded only where it changes the loss (tasks sharing channels), so earlier runs still resume
            **({"dice_pooling": "task"} if method.dice_per_task else {}),
            **(plan.identity_extra or {}),
        },
    )
    result = run_loop(method, model, val_items, options, ctx, identity, on_step)
    if ctx.is_main:
        val_ids = [c.case_id for c, _ in val_cases]
        extra = dict(plan.identity_extra or {})
        if settings.task_sampling != "uniform":
            extra["task_sampling"] = settings.task_sampling
        if settings.label_mapping != "rank":
            extra["label_mapping"] = settings.label_mapping
        if method.dice_per_task:
            extra["dice_pooling"] = "task"
        if settings.val_labels is not None:  # which labels chose the best weights (all when not capped)
            extra["validation_labels"] = {t.name: val_labels[t.index] for t in plan.tasks}
        meta = training_meta(
            plan.kind,
            result,
            options,
            datasets,
            val_ids,
            ctx.world_size,
            device=ctx.device,
            appearance=settings.appearance,
            **extra,
        )
        factory.write_task_bundle(
            out,
            plan.kind,
            plan.tasks,
            prep,
            label_space=plan.space,
            state_dict=result.state_dict,
            network_config=network,
            name=settings.name or out.name,
            training=meta,
            reference=reference,
        )
        mark_bundle_written(checkpoint_dir, out, options.bundle_weights)
    ctx.barrier()
    return TrainedBundle(out, result, options)


def _continuing_individual(config: TaskRunConfig) -> bool:
    """``individual --resume`` into its own half-finished folder of per-task bundles."""
    out = config.out
    return config.settings.resume and out.is_dir() and not (out / "bundle.json").exists()


def train_tasks(config: TaskRunConfig, on_step: StepCallback | None = None) -> list[TrainedBundle]:
    """Train one bundle over all tasks (``individual``: one bundle per task in the folder ``config.out``)."""
    settings = config.settings
    if config.kind != "labelsharing" and (
        settings.task_film or settings.label_mapping != "rank" or settings.head_chosen
    ):
        raise InputError("--task-film, --head and --label-mapping are options of labelsharing training")
    if config.kind == "individual":
        return _train_individual(config, on_step)
    checkpoint_dir = claim_outputs(config.out, settings)
    datasets = load_datasets(config.data)
    with distributed_session(settings.device, settings.threads) as ctx:
        shuffle = settings.seed if settings.label_mapping == "shuffled" else None
        tasks, space = task_infos(config.kind, datasets, shuffle_seed=shuffle)
        if space is not None and ctx.is_main and not settings.quiet:
            print(space.format_table())
        plan = TaskModelPlan(config.kind, tasks, space, reference_path=config.reference)
        trained = train_task_model(plan, datasets, settings, ctx, config.out, checkpoint_dir, on_step=on_step)
        print_summary(ctx, trained)
        return [trained]


def _train_individual(config: TaskRunConfig, on_step: StepCallback | None) -> list[TrainedBundle]:
    """One bundle per task; a resumed run skips finished tasks and continues the interrupted one."""
    settings = config.settings
    base_checkpoint_dir = settings.checkpoint_dir_for(config.out)  # holds one checkpoint folder per task
    continuing = _continuing_individual(config)
    if not continuing:
        check_new_output(config.out, settings)
    if not settings.resume:
        check_checkpoint_dir(base_checkpoint_dir, resume=False)
    datasets = load_datasets(config.data)
    deadline = None if settings.time_limit_min is None else time.time() + settings.time_limit_min * 60.0
    trained_bundles = []
    with distributed_session(settings.device, settings.threads) as ctx:
        if ctx.is_main:
            config.out.mkdir(exist_ok=continuing)
            claim_folder(base_checkpoint_dir)
        ctx.barrier()
        for k, dataset in enumerate(datasets):
            name = dataset.task_name()  # a plain folder name (checked when the dataset is read)
            out, checkpoint_dir = config.out / name, base_checkpoint_dir / name
            if continuing and (out / "bundle.json").is_file():
                if ctx.is_main:
                    print(f"{name}: already trained in {out}, skipping")
                continue
            # tasks the killed run never reached start fresh; the interrupted one continues
            task_settings = settings.with_changes(
                resume=settings.resume and (checkpoint_dir / LAST).is_file()
            )
            tasks, _ = task_infos(config.kind, [dataset])
            plan = TaskModelPlan(config.kind, tasks, reference_path=config.reference)
            trained = train_task_model(
                plan,
                [dataset],
                task_settings,
                ctx,
                out,
                checkpoint_dir,
                time_limit_s=elapsed_share(deadline, len(datasets) - k),
                on_step=on_step,
            )
            print_summary(ctx, trained)
            trained_bundles.append(trained)
    return trained_bundles
