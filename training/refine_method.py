"""Training the LCS that refines registration (networks.RefineLCSNet): pairs, samples, loss, validation.

A training pair is (atlas -> training case) registered by the project's own registration (affine + deformable,
pair_registrations.py), then put on the atlas grid in scan space with the engine's own ``refine_inputs`` (what
inference feeds the network). Each sample conditions on one atlas mask made from the trained (coarse) labels:

* a random label, merged with a second one with probability ``merge_prob`` (as Ma et al. 2022);
* with probability ``split_prob``, split into 2..``max_parts`` random Voronoi cells (seeds drawn in the label,
  world coordinates of atlas space) and one cell kept. The same seeds split the case's label alike, so the
  network learns to follow masks finer than any label it was trained on (the fine labels drawn later).

The atlas mask is carried onto the grid through the pair's registration (linear interpolation, as inference
carries it); the network sees a patch around a random point of the mask's boundary, with a margin of the
receptive field on every side, so each patch computes exactly what full-volume inference computes there. The
loss is binary cross-entropy + soft Dice on the patch. Validation: held-out cases, each trained label split into
fixed Voronoi cells, segmented by the inference path itself (encoder once, boxes), mean Dice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from LabelSharingSegLib.engine.atlas_segmentation import LCS_THRESHOLD, keep_most_probable
from LabelSharingSegLib.engine.network_config import REFINE_HALO, RefineLCSConfig
from LabelSharingSegLib.engine.propagation import Propagation
from LabelSharingSegLib.engine.registered import refine_inputs, refined_in_boxes
from LabelSharingSegLib.engine.warping import apply_affine, grid_points, sample

from .methods import _unwrap, voronoi_seeds, voronoi_split
from .metrics import dice as dice_score
from .samples import step_rng

VAL_PARTS = 4  # Voronoi cells per trained label in validation


def most_probable(probabilities: torch.Tensor) -> torch.Tensor:
    """Bool (K, ...): each voxel in the mask of its most probable label (ties: the earlier), none below 0.5."""
    shape = probabilities.shape[1:]
    best, index = keep_most_probable(
        torch.zeros(shape), torch.zeros(shape, dtype=torch.int32), probabilities.float(), 0
    )
    labels = torch.arange(probabilities.shape[0], dtype=torch.int32).view(-1, *([1] * len(shape)))
    return (index[None] == labels) & (best >= LCS_THRESHOLD)[None]


@dataclass
class RefinePair:
    """One registered (atlas -> case) pair on the atlas grid in scan space."""

    case_id: str
    inputs: torch.Tensor  # (2, *grid): scan, atlas warped onto it (normalised)
    target: torch.Tensor  # (*grid) int64: the case's trained label values
    points: torch.Tensor  # (*grid, 3) float64: the atlas world point each grid voxel sees (q + u(q))


def make_pair(
    case_id: str,
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    atlas_image: np.ndarray,
    grid_affine: np.ndarray,
    intensity,
    lut: torch.Tensor,
    propagation: Propagation,
) -> RefinePair:
    """Inputs exactly as inference builds them (``refine_inputs``); the truth sampled at the same points."""
    scan, warped = refine_inputs(atlas_image, grid_affine, intensity, image, affine, propagation)
    assert propagation.alignment is not None
    matrix = propagation.alignment.matrix
    shape = tuple(atlas_image.shape)
    at = apply_affine(matrix, grid_points(shape, grid_affine))
    truth = sample(torch.as_tensor(np.asarray(label, np.float32))[None], affine, at, mode="nearest")[0]
    target = lut[truth.round().long().clamp(0, len(lut) - 1)]
    points = propagation.atlas_points(shape, matrix @ grid_affine)
    return RefinePair(case_id, torch.cat([scan[0], warped[0]]), target, points)


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Voxels of a bool (*grid) mask with a 6-neighbour outside it."""
    m = mask[None, None].float()
    eroded = -F.max_pool3d(-m, 3, stride=1, padding=1)
    return (m - eroded)[0, 0] > 0


class RefineMethod:
    """The method object the shared loop (trainer.py) drives: ``batch``, ``loss``, ``validate``."""

    spatial_dims = 3

    def __init__(
        self,
        atlas_labels: torch.Tensor,
        values: list[int],
        grid_affine: np.ndarray,
        network: RefineLCSConfig,
        patch: int,
        merge_prob: float = 0.5,
        split_prob: float = 0.5,
        max_parts: int = 8,
    ):
        self.atlas_labels = torch.as_tensor(atlas_labels).long()
        self.values = [int(v) for v in values]
        self.grid_affine = np.asarray(grid_affine, np.float64)
        self.grid = tuple(int(s) for s in self.atlas_labels.shape)
        self.patch = [min(int(patch), g) for g in self.grid]
        self.margin = network.encoder_halo + REFINE_HALO  # receptive field of the whole network
        self.merge_prob, self.split_prob, self.max_parts = merge_prob, split_prob, max_parts
        self.items: list[RefinePair] = []
        self.device_batches = None
        self.loader_workers = 0

    def make_sampler(self, items: list[RefinePair], *_args, **_kwargs):
        self.items = items
        return self

    # -- samples ---------------------------------------------------------------------------------------
    def condition(self, rng: np.random.Generator, pair: RefinePair) -> tuple[torch.Tensor, torch.Tensor]:
        """A random (atlas mask, case truth) of merged and possibly split trained labels, bool (*grid) each."""
        chosen = [self.values[int(rng.integers(len(self.values)))]]
        if len(self.values) > 1 and rng.random() < self.merge_prob:
            others = [v for v in self.values if v != chosen[0]]
            chosen.append(others[int(rng.integers(len(others)))])
        atlas = torch.isin(self.atlas_labels, torch.tensor(chosen))
        truth = torch.isin(pair.target, torch.tensor(chosen))
        if rng.random() < self.split_prob and int(atlas.sum()) >= 2:
            parts = int(rng.integers(2, self.max_parts + 1))
            seeds = voronoi_seeds(atlas.numpy(), self.grid_affine, parts, rng)
            keep = int(rng.integers(len(seeds)))
            atlas = torch.as_tensor(voronoi_split(atlas.numpy(), self.grid_affine, seeds)[keep])
            truth = torch.as_tensor(voronoi_split(truth.numpy(), self.grid_affine, seeds)[keep])
        return atlas, truth

    def _windows(self, rng: np.random.Generator, atlas: torch.Tensor):
        """(region, input window, padding) around a random boundary voxel of the atlas mask."""
        edge = torch.nonzero(_boundary(atlas))
        centre = (
            edge[int(rng.integers(edge.shape[0]))].tolist() if edge.shape[0] else [g // 2 for g in self.grid]
        )
        region, window, pads = [], [], []
        for c, p, g in zip(centre, self.patch, self.grid):
            start = min(max(0, int(c) - p // 2 + int(rng.integers(-2, 3))), g - p)
            region.append(slice(start, start + p))
            low, high = start - self.margin, start + p + self.margin
            window.append(slice(max(0, low), min(g, high)))
            pads.append((max(0, -low), max(0, high - g)))
        return tuple(region), tuple(window), pads

    def sample_one(self, rng: np.random.Generator) -> dict:
        pair = self.items[int(rng.integers(len(self.items)))]
        atlas, truth = self.condition(rng, pair)
        region, window, pads = self._windows(rng, atlas)
        carried = sample(atlas[None].float(), self.grid_affine, pair.points[window], mode="bilinear")
        flat = [amount for pad in reversed(pads) for amount in pad]  # F.pad wants the last axis first
        inputs = F.pad(torch.cat([pair.inputs[(slice(None), *window)], carried]), flat)
        # intensity jitter of the scan (the atlas is always the same image)
        inputs[0] = inputs[0] * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.1, 0.1))
        return {"inputs": inputs, "target": truth[region][None].float()}

    def batch(self, seed: int, rank: int, step: int, batch_size: int) -> dict:
        rng = step_rng(seed, rank, step)
        samples = [self.sample_one(rng) for _ in range(batch_size)]
        return {
            "image": torch.stack([s["inputs"][:2] for s in samples]),
            "mask": torch.stack([s["inputs"][2:] for s in samples]),
            "target": torch.stack([s["target"] for s in samples]),
        }

    def loss(self, model, batch: dict, device: torch.device) -> torch.Tensor:
        image = batch["image"].to(device)
        logits = model(image[:, :1], image[:, 1:], batch["mask"].to(device)).float()
        m = self.margin
        inner = logits[:, :, m:-m, m:-m, m:-m]
        target = batch["target"].to(device)
        bce = F.binary_cross_entropy_with_logits(inner, target)
        probs = torch.sigmoid(inner)
        dims = tuple(range(1, probs.ndim))
        soft = (2 * (probs * target).sum(dims) + 1.0) / (probs.sum(dims) + target.sum(dims) + 1.0)
        return bce + 1.0 - soft.mean()

    # -- validation ------------------------------------------------------------------------------------
    def validation_conditions(self, pair: RefinePair) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed conditions of a validation pair: every trained label in ``VAL_PARTS`` Voronoi cells (seeds from
        the label's value, the same for every case): (atlas masks, truths), bool (K, *grid) each."""
        atlas_masks, truths = [], []
        for value in self.values:
            atlas = (self.atlas_labels == value).numpy()
            if atlas.sum() < VAL_PARTS:
                continue
            seeds = voronoi_seeds(atlas, self.grid_affine, VAL_PARTS, np.random.default_rng(value))
            atlas_masks.append(voronoi_split(atlas, self.grid_affine, seeds))
            truths.append(voronoi_split((pair.target == value).numpy(), self.grid_affine, seeds))
        return torch.as_tensor(np.concatenate(atlas_masks)), torch.as_tensor(np.concatenate(truths))

    def propagated(self, pair: RefinePair, atlas_masks: torch.Tensor) -> torch.Tensor:
        return sample(atlas_masks.float(), self.grid_affine, pair.points, mode="bilinear")

    @torch.no_grad()
    def validate(self, model, items: list[RefinePair], device: torch.device, *, refine: bool = True) -> float:
        """Mean Dice of the refined masks (``refine=False``: of the propagated masks alone) over every
        validation pair and fixed Voronoi cell, through the inference path (encoder once, boxes), decided as
        ``segment`` decides: each voxel the most probable cell, background below 0.5."""
        net = _unwrap(model)
        scores = []
        for pair in items:
            atlas_masks, truths = self.validation_conditions(pair)
            probabilities = self.propagated(pair, atlas_masks)
            if refine:
                image = pair.inputs[None].to(device)
                features = net.encode(image[:, :1], image[:, 1:])
                carried, probabilities = probabilities, torch.zeros_like(probabilities)
                for k, box, probs in refined_in_boxes(net, features, carried.to(device), chunk=8):
                    probabilities[(k, *box)] = probs.cpu()  # zero outside each cell's box, as at inference
            decided = most_probable(probabilities)
            for k in range(truths.shape[0]):
                score = dice_score(decided[k].numpy(), truths[k].numpy())
                if not math.isnan(score):
                    scores.append(score)
        return float(np.mean(scores)) if scores else float("nan")
