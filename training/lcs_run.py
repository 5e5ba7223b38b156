"""``train_lcs``: label conditioned segmentation with an atlas (Ma et al. 2022) on one dataset with many labels,
optionally on coarse labels merged through a hierarchy (``--coarse-map``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from LabelSharingSegLib.engine.atlas_warp import warp_image, warp_masks, warped_points
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.labels import LabelInfo, default_color
from LabelSharingSegLib.engine.networks import build_network
from LabelSharingSegLib.engine.preprocessing import resample_to_grid, to_model_grid
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing

from . import bundle_factory as factory
from . import run_session as session
from .case_alignment import CaseRegistrations, register_cases
from .datasets import NnUNetDataset, as_volume, load_case
from .distributed import distributed_session
from .label_hierarchy import LabelHierarchy, read_coarse_map
from .methods import LCSMethod
from .planning import (
    declared_contrast,
    declared_modality,
    detect_dims,
    load_datasets,
    reference_image,
    split_cases,
)
from .run_config import LCSRunConfig
from .run_identity import RunIdentity
from .samples import ToAtlasGrid, cache_items
from .trainer import StepCallback
from .validation_labels import validation_labels


@dataclass(frozen=True)
class AtlasPlan:
    """The atlas on the model grid and the (possibly coarse) labels the network learns."""

    case_id: str
    raw: torch.Tensor  # atlas image on its grid, before normalisation
    labels: torch.Tensor  # label values (coarse where mapped) on the same grid
    grid_affine: np.ndarray
    grid_shape: tuple[int, ...]
    present: list[int]  # label values present on the grid
    names: dict[int, str]
    lut: torch.Tensor  # fine value -> trained value
    prep: Preprocessing


def _label_names(fine: dict[int, str], hierarchy: LabelHierarchy) -> dict[int, str]:
    names: dict[int, str] = {}
    for value, name in fine.items():
        target = hierarchy.fine_to_coarse.get(value, value)
        names[target] = hierarchy.coarse_names.get(target) or (
            name if target == value else names.get(target, f"coarse_{target}")
        )
    return names


def plan_atlas(config: LCSRunConfig, dataset: NnUNetDataset, hierarchy: LabelHierarchy) -> AtlasPlan:
    settings = config.settings
    fine_labels = dataset.foreground_labels()
    unknown = sorted(set(hierarchy.fine_to_coarse) - set(fine_labels))
    if unknown:
        raise InputError(f"{config.coarse_map}: fine values {unknown} are not labels of {dataset.root}")
    names = _label_names(fine_labels, hierarchy)
    max_value = max(list(fine_labels) + list(names))
    lut = torch.arange(max_value + 1)
    for fine, coarse in hierarchy.fine_to_coarse.items():
        lut[fine] = coarse
    ids = [c.case_id for c in dataset.training]
    atlas_id = config.atlas_case or ids[0]
    if atlas_id not in ids:
        raise InputError(
            f"--atlas-case {atlas_id!r} is not a training case of {dataset.root}; "
            f"choose one of: {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}"
        )
    dims, spacing, _ = detect_dims(dataset)
    spacing = list(settings.spacing or spacing)
    # the grid does not depend on the network; only the padding to its pooling factor does
    factor = (
        1
        if config.arch == "lcs_refine"
        else factory.network_config_for("lcs", [], dims, list(settings.channels)).downsample_factor
    )
    image, label, affine = load_case(dataset.training[ids.index(atlas_id)])
    raw, label = as_volume(image[0]), as_volume(label)
    # only the grid is wanted here: no normalisation, and the patch size is not used
    probe = factory.make_preprocessing(dims, spacing, [factor] * dims, {"mode": "none"}, factor=factor)
    grid = to_model_grid(raw, affine, probe)
    grid_affine, grid_shape = grid.affine.numpy(), tuple(grid.shape[1:])

    def on_grid(volume: np.ndarray, mode: str) -> torch.Tensor:
        source = torch.as_tensor(volume.astype(np.float32))[None]
        return resample_to_grid(source, grid_affine, grid_shape, mode=mode, src_affine=affine)[0]

    atlas_labels = lut[on_grid(label, "nearest").round().long()]
    present = sorted(set(torch.unique(atlas_labels).tolist()) - {0})
    if not present:
        raise InputError(f"atlas case {atlas_id!r} has no labels on the model grid")
    patch = [s + (-s) % factor for s in grid_shape[:dims]]
    prep = factory.make_preprocessing(
        dims,
        spacing,
        patch,
        {"mode": settings.intensity},
        factor=factor,
        modality=declared_modality([dataset]),
        contrast=declared_contrast([dataset]),
    )
    return AtlasPlan(
        atlas_id, on_grid(raw, "bilinear"), atlas_labels, grid_affine, grid_shape, present, names, lut, prep
    )


def _validation_sample(dataset, atlas: AtlasPlan, settings) -> list[int]:
    """The labels validation scores. With a cap the sample is drawn from the dataset's (trained) label values, as
    a multi-channel run on the same data draws it, then labels the atlas case lacks are dropped (LCS cannot
    condition on them); so both methods score the same labels wherever the atlas has them."""
    if settings.val_labels is None:
        return validation_labels(atlas.present, None, settings.seed)
    declared = {int(atlas.lut[v]) for v in dataset.foreground_labels() if v < len(atlas.lut)}
    sample = validation_labels(declared | set(atlas.present), settings.val_labels, settings.seed)
    kept = [v for v in sample if v in atlas.present]
    return kept or validation_labels(atlas.present, settings.val_labels, settings.seed)


def _aligned_cases(config: LCSRunConfig, checkpoint_dir, atlas: AtlasPlan, cases, ctx) -> CaseRegistrations:
    """Every case registered to the atlas (``--align-cases``): the main process registers (or reads the cache),
    the others read what it stored."""
    cache = config.registration_cache or checkpoint_dir / "registrations"

    def register(quiet: bool) -> CaseRegistrations:
        deformable = config.align_cases == "deformable"
        return register_cases(cases, atlas.raw.numpy(), atlas.grid_affine, cache, quiet, deformable)

    if ctx.is_main:
        session.claim_folder(checkpoint_dir)  # the cache may live inside it
        found = register(config.settings.quiet)
        if found.left_out:
            print(
                f"registration to the atlas refused, case(s) left out: {', '.join(found.left_out)}",
                flush=True,
            )
    ctx.barrier()
    if not ctx.is_main:
        found = register(True)
    return found


def _carry_atlas(items: list[dict], atlas: AtlasPlan, deformations: dict) -> None:
    """``--align-cases deformable``: each case gets the atlas image and label map carried onto it by its
    registration (engine/atlas_warp.py, as inference carries them onto a scan)."""
    for item in items:
        deformation = deformations[item["case"].case_id]
        points = warped_points(deformation, atlas.grid_shape, atlas.grid_affine)
        item["atlas_image"] = warp_image(atlas.raw, atlas.grid_affine, points)
        item["atlas_label"] = warp_masks(atlas.labels[None], atlas.grid_affine, points)[0].round().long()


def train_lcs(config: LCSRunConfig, on_step: StepCallback | None = None) -> session.TrainedBundle:
    if config.arch == "lcs_refine":
        from .refine_run import train_refine

        return train_refine(config, on_step)
    settings = config.settings
    if (
        settings.task_film
        or settings.head_chosen
        or settings.label_mapping != "rank"
        or settings.task_sampling != "uniform"
        or settings.dice_pooling is not None
    ):
        raise InputError(
            "--task-film, --head, --label-mapping, --task-sampling and --dice-pooling are options of task "
            "training, not lcs"
        )
    checkpoint_dir = session.claim_outputs(config.out, settings)
    dataset = load_datasets([config.data])[0]
    hierarchy = read_coarse_map(config.coarse_map) if config.coarse_map else LabelHierarchy({})
    atlas = plan_atlas(config, dataset, hierarchy)
    reference = reference_image(config.reference, atlas.prep)  # checked before any training time is spent
    others = [c for c in dataset.training if c.case_id != atlas.case_id]
    if not others:
        others = [c for c in dataset.training if c.case_id == atlas.case_id]
    train_cases, val_cases = split_cases(others, settings.val_fraction, settings.seed)
    if config.align_cases != "none" and atlas.prep.spatial_dims != 3:
        raise InputError(
            f"--align-cases {config.align_cases} needs 3D data: a 2D case cannot be registered to the atlas"
        )
    # network options beyond the paper's: code k is the k-th atlas label; the atlas carried onto every scan
    extra: dict = {"label_codes": len(atlas.present)} if config.label_codes else {}
    if config.align_cases == "deformable":
        extra["atlas_warp"] = "deformable"
    network = factory.network_config_for(
        "lcs", [], atlas.prep.spatial_dims, list(settings.channels), conditioning=config.conditioning, **extra
    )
    val_labels = _validation_sample(dataset, atlas, settings)
    method = LCSMethod(
        atlas.raw,
        atlas.labels,
        atlas.present,
        network,
        atlas.prep,
        merge_prob=config.merge_prob,
        val_labels=val_labels,
        labels_per_image=config.labels_per_image,
        loss=config.loss,
        label_draw=config.label_draw,
        label_codes=config.label_codes,
    )
    max_value = len(atlas.lut) - 1

    def mapped(cases, registered: CaseRegistrations):
        transform = ToAtlasGrid(atlas.prep, atlas.grid_affine, atlas.grid_shape, registered.affines)
        items = cache_items([(c, 0) for c in cases], transform, settings.cache_workers)
        for item in items:
            item["label"] = atlas.lut[item["label"].clamp(0, max_value)]
        if registered.deformations:
            _carry_atlas(items, atlas, registered.deformations)
        return method.prepare_items(items)

    with distributed_session(settings.device, settings.threads) as ctx:
        registered = CaseRegistrations()
        if config.align_cases != "none":
            registered = _aligned_cases(config, checkpoint_dir, atlas, train_cases + val_cases, ctx)
            train_cases = [c for c in train_cases if c.case_id in registered.affines]
            val_cases = [c for c in val_cases if c.case_id in registered.affines]
            if not train_cases:
                raise InputError("no training case could be registered to the atlas; nothing to train on")
        left_out = registered.left_out
        items = mapped(train_cases, registered)
        val_items = mapped(val_cases, registered) if ctx.is_main else []
        method.make_sampler(
            items, settings.foreground_prob, settings.augment, settings.pipeline_settings(), ctx.device
        )
        options = session.train_options(settings, checkpoint_dir, len(train_cases), ctx.world_size)
        torch.manual_seed(settings.seed)
        model = build_network(network)
        coarse_pairs = sorted(hierarchy.fine_to_coarse.items())
        identity = RunIdentity(
            method="lcs",
            network=network,
            preprocessing=atlas.prep,
            train_cases=tuple(c.case_id for c in train_cases),
            val_cases=tuple(c.case_id for c in val_cases),
            settings=settings,
            world_size=ctx.world_size,
            method_specific={
                "atlas_case": atlas.case_id,
                "coarse_map": {str(k): v for k, v in coarse_pairs},
                "labels": atlas.present,
                "merge_prob": config.merge_prob,
                **config.lcs_variant_options(),
            },
        )
        result = session.run_loop(method, model, val_items, options, ctx, identity, on_step)
        if ctx.is_main:
            meta = session.training_meta(
                "lcs",
                result,
                options,
                [dataset],
                [c.case_id for c in val_cases],
                ctx.world_size,
                device=ctx.device,
                appearance=settings.appearance,
                atlas_case=atlas.case_id,
                coarse_map=[[f, c] for f, c in coarse_pairs],
                fine_labels=[[v, n] for v, n in sorted(dataset.foreground_labels().items())],
                merge_prob=config.merge_prob,
                labels_per_image=config.labels_per_image,
                loss=config.loss,
                label_draw=config.label_draw,
                align_cases=config.align_cases,
                label_codes=config.label_codes,
                **({"left_out_cases": left_out} if left_out else {}),
                **({} if settings.val_labels is None else {"validation_labels": val_labels}),
            )
            factory.write_lcs_bundle(
                config.out,
                atlas.raw.numpy(),
                atlas.labels.numpy().astype(np.int16),
                atlas.grid_affine,
                [LabelInfo(v, atlas.names[v], default_color(v)) for v in atlas.present],
                atlas.prep,
                network=network,
                state_dict=result.state_dict,
                name=settings.name or config.out.name,
                training=meta,
                reference=reference,
            )
            session.mark_bundle_written(checkpoint_dir, config.out, options.bundle_weights)
        ctx.barrier()
        trained = session.TrainedBundle(config.out, result, options)
        session.print_summary(ctx, trained)
        return trained
