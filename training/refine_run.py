"""``lsseg train lcs --arch lcs_refine``: the LCS that refines registration (networks.RefineLCSNet).

The atlas is planned as for the paper's LCS (``lcs_run.plan_atlas``: the atlas case on the model grid, trained
labels coarse where ``--coarse-map`` merges them). Every other training case is registered to it once by the
project's own registration (affine + deformable, cached: ``pair_registrations.py``); a case whose registration
diverges is left out and named. Samples, loss and validation: ``refine_method.py``. The bundle is an LCS bundle
whose network is ``lcs_refine``; ``lsseg segment --method lcs-refine`` uses it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.labels import LabelInfo, default_color
from LabelSharingSegLib.engine.network_config import RefineLCSConfig
from LabelSharingSegLib.engine.networks import build_network

from . import bundle_factory as factory
from . import run_session as session
from .datasets import as_volume, load_case
from .distributed import distributed_session
from .label_hierarchy import LabelHierarchy, read_coarse_map
from .lcs_run import AtlasPlan, plan_atlas
from .pair_registrations import cached_registration
from .planning import load_datasets, reference_image, split_cases
from .refine_method import RefineMethod, RefinePair, make_pair
from .run_config import LCSRunConfig
from .run_identity import RunIdentity
from .trainer import StepCallback

DEFAULT_PATCH = 24  # voxels per axis of the scored region of a sample (plus the receptive field each side)


def registered_pairs(cases, atlas: AtlasPlan, cache: Path, quiet: bool) -> tuple[list[RefinePair], list[str]]:
    """(pairs, ids of cases left out because their registration diverged)."""
    atlas_image = atlas.raw.numpy()
    pairs, left_out = [], []
    for n, case in enumerate(cases):
        began = time.time()
        image, label, affine = load_case(case)
        volume = as_volume(image[0])
        propagation = cached_registration(cache, atlas_image, atlas.grid_affine, volume, affine)
        if propagation is None:
            left_out.append(case.case_id)
            continue
        pairs.append(
            make_pair(
                case.case_id,
                volume,
                as_volume(label),
                affine,
                atlas_image,
                atlas.grid_affine,
                atlas.prep.intensity,
                atlas.lut,
                propagation,
            )
        )
        if not quiet:
            print(
                f"registered {case.case_id} ({n + 1}/{len(cases)}) in {time.time() - began:.1f} s", flush=True
            )
    return pairs, left_out


def train_refine(config: LCSRunConfig, on_step: StepCallback | None = None) -> session.TrainedBundle:
    settings = config.settings
    checkpoint_dir = session.claim_outputs(config.out, settings)
    dataset = load_datasets([config.data])[0]
    hierarchy = read_coarse_map(config.coarse_map) if config.coarse_map else LabelHierarchy({})
    atlas = plan_atlas(config, dataset, hierarchy)
    if atlas.prep.spatial_dims != 3:
        raise InputError("--arch lcs_refine needs 3D data: it refines a 3D registration")
    # stored for inference only: scans are aligned through it (engine/atlas_segmentation._reference_alignment)
    reference = reference_image(config.reference, atlas.prep)
    others = [c for c in dataset.training if c.case_id != atlas.case_id]
    if config.max_cases is not None:
        others = others[: config.max_cases]
    train_cases, val_cases = split_cases(others, settings.val_fraction, settings.seed)
    if not train_cases:
        raise InputError(f"{dataset.root}: --arch lcs_refine needs training cases besides the atlas case")
    network = RefineLCSConfig(spatial_dims=3, channels=tuple(settings.channels[:2]))
    patch = settings.patch[0] if settings.patch else DEFAULT_PATCH
    method = RefineMethod(
        atlas.labels,
        atlas.present,
        atlas.grid_affine,
        network,
        patch,
        merge_prob=config.merge_prob,
        split_prob=config.split_prob,
        max_parts=config.max_parts,
    )
    cache = config.registration_cache or checkpoint_dir / "registrations"
    with distributed_session(settings.device, settings.threads) as ctx:
        if ctx.is_main:
            session.claim_folder(checkpoint_dir)  # the cache may live inside it
        began = time.time()
        items, left_out = registered_pairs(train_cases, atlas, cache, settings.quiet or not ctx.is_main)
        val_items, val_left_out = (
            registered_pairs(val_cases, atlas, cache, settings.quiet) if ctx.is_main else ([], [])
        )
        registration_seconds = time.time() - began
        if left_out + val_left_out and ctx.is_main:
            print(f"registration diverged, case(s) left out: {', '.join(left_out + val_left_out)}")
        if not items:
            raise InputError("no training case could be registered to the atlas; nothing to train on")
        method.make_sampler(items)
        options = session.train_options(settings, checkpoint_dir, len(items), ctx.world_size)
        torch.manual_seed(settings.seed)
        model = build_network(network)
        coarse_pairs = sorted(hierarchy.fine_to_coarse.items())
        identity = RunIdentity(
            method="lcs_refine",
            network=network,
            preprocessing=atlas.prep,
            train_cases=tuple(p.case_id for p in items),
            val_cases=tuple(p.case_id for p in val_items),
            settings=settings,
            world_size=ctx.world_size,
            method_specific={
                "atlas_case": atlas.case_id,
                "coarse_map": {str(k): v for k, v in coarse_pairs},
                "labels": atlas.present,
                "merge_prob": config.merge_prob,
                "split_prob": config.split_prob,
                "max_parts": config.max_parts,
                "patch": patch,
            },
        )
        baseline = method.validate(model, val_items, ctx.device, refine=False) if val_items else float("nan")
        if ctx.is_main and not settings.quiet and val_items:
            print(f"validation Dice of deformable propagation alone: {baseline:.4f}")
        result = session.run_loop(method, model, val_items, options, ctx, identity, on_step)
        if ctx.is_main:
            meta = session.training_meta(
                "lcs_refine",
                result,
                options,
                [dataset],
                [p.case_id for p in val_items],
                ctx.world_size,
                atlas_case=atlas.case_id,
                coarse_map=[[f, c] for f, c in coarse_pairs],
                fine_labels=[[v, n] for v, n in sorted(dataset.foreground_labels().items())],
                device=ctx.device,
                threads=torch.get_num_threads(),
                registration_seconds=round(registration_seconds, 1),
                left_out_cases=left_out + val_left_out,
                val_dice_propagation_alone=None if baseline != baseline else baseline,
                split_prob=config.split_prob,
                merge_prob=config.merge_prob,
            )
            factory.write_lcs_bundle(
                config.out,
                atlas.raw.numpy(),
                atlas.labels.numpy().astype(np.int16),
                atlas.grid_affine,
                [LabelInfo(v, atlas.names[v], default_color(v)) for v in atlas.present],
                atlas.prep,
                channels=list(network.channels),
                state_dict=result.state_dict,
                name=settings.name or config.out.name,
                training=meta,
                arch="lcs_refine",
                reference=reference,
            )
            session.mark_bundle_written(checkpoint_dir, config.out, options.bundle_weights)
        ctx.barrier()
        trained = session.TrainedBundle(config.out, result, options)
        session.print_summary(ctx, trained)
        return trained
