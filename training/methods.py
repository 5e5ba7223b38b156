"""What differs between the methods: how a labelled sample becomes network input + target, the forward call,
the loss, and the validation score. The data pipeline, optimiser and loop are shared (``trainer.py``).

* Task methods (labelsharing, multichannel, individual, dodnet): a task's label values are mapped to output
  channels with the bundle's own ``TaskInfo.channels`` (the same table inference decodes with). Only the
  sample's task channels and background compete in the softmax, exactly as at inference; the loss is
  cross-entropy + soft Dice: batch Dice per output channel (``channel``), or per label of each task over the
  batch's samples of that task (``task``; ``TaskMethod._dice_loss_per_task``).
* LCS (Ma et al. 2022): each sample draws a random atlas label and, with probability 0.5, merges it with a second
  one; the network gets the atlas image + that label's atlas mask and is trained with soft Dice on the
  conditioned label only. Its inputs are normalised and padded (centred, with the engine's own helpers) exactly
  as ``PreparedLCS`` prepares them at inference.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from LabelSharingSegLib.engine.atlas_segmentation import LCS_THRESHOLD, keep_most_probable
from LabelSharingSegLib.engine.bundle import TaskInfo
from LabelSharingSegLib.engine.bundle_kind import BundleKind
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.inference import predict_logits
from LabelSharingSegLib.engine.network_config import NetworkConfig

# The LCS network input is padded exactly as inference pads it (centred); these helpers are the engine's own.
from LabelSharingSegLib.engine.preprocessing import (
    centred_pad_amounts,
    crop_spatial,
    normalise_intensity,
    pad_spatial,
)
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing

from .metrics import dice as dice_score
from .pipeline import LCSBatches, PipelineSettings, TaskBatches
from .run_config import DEFAULT_DICE_POOLING, DICE_POOLINGS
from .samples import PatchSampler, build_augmentation, step_rng

MASKED_LOGIT = -1.0e4  # fits float16 and bfloat16


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


class TaskMethod:
    """Label sharing and the task baselines."""

    def __init__(
        self,
        kind: BundleKind | str,
        tasks: list[TaskInfo],
        network_config: NetworkConfig,
        prep: Preprocessing,
        val_labels: dict[int, list[int]] | None = None,
        task_weights: dict[int, float] | None = None,
        dice_pooling: str = DEFAULT_DICE_POOLING,
    ):
        """``val_labels``: per task index, the label values validation scores (default: all of the task's);
        ``task_weights``: how often each task is drawn (default: equally often); ``dice_pooling``: what one soft
        Dice pools over, an output channel across the batch (``channel``) or one label of one task across the
        batch's samples of that task (``task``)."""
        if dice_pooling not in DICE_POOLINGS:
            raise InputError(f"dice pooling must be one of {', '.join(DICE_POOLINGS)}, got {dice_pooling!r}")
        self.task_weights = task_weights
        self.kind = BundleKind.parse(kind)
        self.takes_task = network_config.TAKES_TASK  # DoD-Net and label sharing with a task code
        self.tasks = tasks
        self.val_values = {
            task.index: list(task.channels) if val_labels is None else list(val_labels[task.index])
            for task in tasks
        }
        self.out_channels = network_config.out_channels
        self.prep = prep
        self.patch = prep.patch_size
        self.spatial_dims = prep.spatial_dims
        self.luts, masks = [], []
        for task in tasks:
            size = max(task.channels) + 1
            lut = torch.zeros(size, dtype=torch.int64)
            mask = torch.zeros(self.out_channels, dtype=torch.bool)
            mask[0] = True
            for value, channel in task.channels.items():
                lut[value] = channel
                mask[channel] = True
            self.luts.append(lut)
            masks.append(mask)
        self.channel_masks = torch.stack(masks)
        self.label_channels = self.channel_masks.clone()  # (T, K): each task's foreground channels
        self.label_channels[:, 0] = False
        # Pooling by task differs from pooling by channel only where tasks share a channel (label sharing,
        # DoD-Net); elsewhere the channel sum is the same sum, and stays bit for bit what it was.
        shared = bool((self.label_channels.sum(0) > 1).any())
        self.dice_per_task = dice_pooling == "task" and shared

    # -- data ------------------------------------------------------------------------------------------
    def prepare_items(self, items: list[dict]) -> list[dict]:
        """Map each cached label map from task values to output channels (once, after caching)."""
        for item in items:
            item["label"] = self.luts[int(item["task"])][item["label"]]
        return items

    def make_sampler(
        self,
        items,
        foreground_prob: float,
        augment: bool,
        pipeline: PipelineSettings | None = None,
        device: torch.device | None = None,
    ):
        """Patch sampling and augmentation: on the training device (``pipeline.kind == 'device'``) or the
        legacy per-sample MONAI path."""
        self.sampler = PatchSampler(items, self.patch, self.spatial_dims, foreground_prob, self.task_weights)
        self.augmentation = build_augmentation(self.spatial_dims) if augment else None
        self.device_batches = None
        self.loader_workers = 0
        if pipeline is not None and pipeline.kind == "device":
            self.device_batches = TaskBatches(
                self.sampler,
                pipeline,
                device or torch.device("cpu"),
                spacing_mm=float(np.mean(self.prep.spacing)),
            )
            self.loader_workers = self.device_batches.loader_workers
        return self.sampler

    def batch(self, seed: int, rank: int, step: int, batch_size: int) -> dict:
        if getattr(self, "device_batches", None) is not None:
            return self.device_batches(seed, rank, step, batch_size)
        rng = step_rng(seed, rank, step)
        samples = []
        for _ in range(batch_size):
            sample = self.sampler.draw(rng)
            if self.augmentation is not None:
                self.augmentation.set_random_state(seed=int(rng.integers(2**31)))
                out = self.augmentation({"image": sample["image"], "label": sample["label"].float()})
                sample = {
                    "image": torch.as_tensor(out["image"]).float(),
                    "label": torch.as_tensor(out["label"]).round().long(),
                    "task": sample["task"],
                }
            samples.append(sample)
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "target": torch.stack([s["label"][0] for s in samples]),
            "task": torch.tensor([s["task"] for s in samples], dtype=torch.int64),
        }

    # -- network ---------------------------------------------------------------------------------------
    def forward(self, model, image: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        if self.takes_task:
            return model(image, task)
        return model(image)

    def loss(self, model, batch: dict, device: torch.device) -> torch.Tensor:
        image = batch["image"].to(device)
        target = batch["target"].to(device)
        task = batch["task"].to(device)
        logits = self.forward(model, image, task).float()
        # the channel table is indexed on the host: no device-to-host sync inside the step
        allowed_host = self.channel_masks[batch["task"].cpu()]
        allowed = allowed_host.to(device, non_blocking=True)  # (B, K)
        view = allowed.view(*allowed.shape, *([1] * (logits.ndim - 2)))
        logits = logits.masked_fill(~view, MASKED_LOGIT)
        ce = F.cross_entropy(logits, target)
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(target, self.out_channels).movedim(-1, 1).to(probs.dtype)
        dims = tuple(range(2, logits.ndim))
        weight = allowed.to(probs.dtype)
        intersect = (probs * onehot).sum(dims) * weight  # (B, K)
        total = (probs.sum(dims) + onehot.sum(dims)) * weight
        if self.dice_per_task:
            return ce + self._dice_loss_per_task(intersect, total, batch["task"].cpu(), device)
        intersect, total = intersect.sum(0), total.sum(0)
        used = allowed_host.any(0).clone()
        used[0] = False
        soft_dice = (2 * intersect + 1.0) / (total + 1.0)
        if not bool(used.any()):
            return ce
        weight_used = used.to(device=device, dtype=soft_dice.dtype, non_blocking=True)
        dice_loss = 1.0 - (soft_dice * weight_used).sum() / float(used.sum())
        return ce + dice_loss

    def _dice_loss_per_task(
        self, intersect: torch.Tensor, total: torch.Tensor, task_host: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """Soft Dice loss with each task's labels pooled over that task's samples only: a channel that several
        tasks share holds a different label in each (a thin CSF beside a whole lobe), and one Dice over all of
        them would let the largest label decide. Each task present contributes its mean label Dice loss, as a
        model of its own computes it, weighted by its share of the batch's samples.

        ``intersect``, ``total``: (B, K) per sample and channel, zero on channels outside the sample's task."""
        n_tasks = len(self.tasks)
        # the grouping is built on the host: no device-to-host sync inside the step
        groups_host = F.one_hot(task_host, n_tasks).T.to(torch.float32)  # (T, B)
        samples = groups_host.sum(1)  # (T,)
        # (T, K): the labels of the tasks in this batch
        labels_host = self.label_channels & (samples > 0)[:, None]
        task_weight = samples / samples.sum() / labels_host.sum(1).clamp(min=1)  # per label of each task
        label_weight = labels_host.to(torch.float32) * task_weight[:, None]
        groups = groups_host.to(device=device, dtype=intersect.dtype, non_blocking=True)
        soft_dice = (2 * (groups @ intersect) + 1.0) / (groups @ total + 1.0)  # (T, K)
        weights = label_weight.to(device=device, dtype=soft_dice.dtype, non_blocking=True)
        return weights.sum() - (soft_dice * weights).sum()

    # -- validation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_channels(self, model, image: torch.Tensor, task: int, device: torch.device) -> torch.Tensor:
        """Model-grid image (C, X, Y, Z) -> predicted channel map (X, Y, Z), the task's channels only: the engine's
        own prediction (``predict_logits``, as ``segment_task`` runs it), then the task's channels compete."""
        task_index = task if self.takes_task else None
        logits = predict_logits(_unwrap(model), image, self.prep, device, task_index)
        allowed = self.channel_masks[task].view(-1, *([1] * (logits.ndim - 1)))
        return logits.masked_fill(~allowed, MASKED_LOGIT).argmax(0)

    def validate(self, model, items: list[dict], device: torch.device) -> float:
        """Mean Dice over every (validation case, validated task label) on the model grid."""
        scores = []
        for item in items:
            task = int(item["task"])
            pred = self.predict_channels(model, item["image"], task, device).numpy()
            truth = item["label"].numpy()
            channels = self.tasks[task].channels
            for channel in (channels[v] for v in self.val_values[task]):
                score = dice_score(pred == channel, truth == channel)
                if not math.isnan(score):
                    scores.append(score)
        return float(np.mean(scores)) if scores else float("nan")


VALIDATION_CHUNK = 16  # LCS conditionings decoded at once in validation (bounds its memory)
UNCODED_SHARE = 0.25  # with --label-codes: single labels trained without their code, as drawn labels come


class LCSMethod:
    """Label conditioned segmentation: whole atlas-grid volumes (the conditioning is spatial).

    Network inputs are built exactly as ``PreparedLCS`` (inference) builds them: the atlas image is intensity-
    normalised on the atlas grid, 2D drops the singleton slice axis, and every volume (target, atlas image,
    atlas masks) is zero-padded *centred* to the pooling factor with the engine's ``centred_pad_amounts``.
    """

    def __init__(
        self,
        atlas_raw: torch.Tensor,
        atlas_label: torch.Tensor,
        label_values: list[int],
        network_config: NetworkConfig,
        prep: Preprocessing,
        merge_prob: float = 0.5,
        val_labels: list[int] | None = None,
        labels_per_image: int = 1,
        loss: str = "dice",
        label_draw: str = "random",
        label_codes: bool = False,
    ):
        """``atlas_raw``: the atlas image on its grid, (X, Y, Z), before normalisation (as the bundle stores
        it); ``atlas_label``: (X, Y, Z) label values on the same grid; ``val_labels``: the label values
        validation scores (default: all ``label_values``; every label is decoded either way);
        ``labels_per_image``: labels conditioned on each sampled image per step (one encoder pass, that many
        decoder passes; 1 in Ma et al. 2022); ``loss``: 'dice' (soft Dice, as the paper), 'dice-bce' (plus
        binary cross-entropy) or 'competing' (the labels of one image in one softmax, ``competing_probabilities``);
        ``label_draw``: the labels of one image beyond the first drawn 'random'ly or among its atlas 'neighbours';
        ``label_codes``: the network has a code per label (code k: ``label_values[k - 1]``, 0: none)."""
        self.factor = network_config.downsample_factor
        self.spatial_dims = prep.spatial_dims
        self.spacing_mm = float(np.mean(prep.spacing))
        self.values = [int(v) for v in label_values]
        # more than there are: the draw would cap it, and the run would not be the one asked for
        if labels_per_image > len(self.values):
            raise InputError(
                f"--labels-per-image {labels_per_image} asks for more labels per image than the atlas has "
                f"({len(self.values)}); give at most {len(self.values)}"
            )
        self.val_values = self.values if val_labels is None else [int(v) for v in val_labels]
        self.merge_prob = merge_prob
        self.labels_per_image = labels_per_image
        self.loss_kind = loss
        self.label_draw = label_draw
        self.code_of = {v: k + 1 for k, v in enumerate(self.values)} if label_codes else None
        self.grid = tuple(int(s) for s in atlas_label.shape)
        net_grid = self.grid[:2] if self.spatial_dims == 2 else self.grid
        self.pads = centred_pad_amounts(net_grid, self.factor)
        self.intensity = prep.intensity
        atlas_norm = normalise_intensity(torch.as_tensor(atlas_raw), prep.intensity)
        self.atlas_image = self._to_net(atlas_norm[None])  # (1, *net grid)
        self.atlas_label = self._to_net(torch.as_tensor(atlas_label)[None].float())[0].long()
        self.neighbours = (
            atlas_neighbours(self.atlas_label.numpy(), self.values) if label_draw == "neighbours" else {}
        )

    def _to_net(self, volume: torch.Tensor) -> torch.Tensor:
        """(C, X, Y, Z) on the atlas grid -> (C, *net grid): 2D drops the singleton slice axis, then centred zero
        padding to the pooling factor (the same amounts inference uses, so no voxel shifts between them)."""
        if self.spatial_dims == 2:
            volume = volume[..., 0]
        if tuple(volume.shape[1:]) != (self.grid[:2] if self.spatial_dims == 2 else self.grid):
            raise ValueError(
                f"volume of shape {tuple(volume.shape[1:])} is not on the atlas grid {self.grid}"
            )
        return pad_spatial(volume[None], self.pads)[0]

    def crop(self, volume: torch.Tensor) -> torch.Tensor:
        """Undo ``_to_net``'s padding on the trailing spatial axes (as inference crops its probabilities)."""
        return crop_spatial(volume, self.pads)

    def prepare_items(self, items: list[dict]) -> list[dict]:
        """Items onto the network grid; an item's own ``atlas_image`` (raw) and ``atlas_label``, the atlas carried
        onto that case (``--align-cases deformable``), replace the atlas for it, normalised as inference does."""
        for item in items:
            item["image"] = self._to_net(item["image"])
            item["label"] = self._to_net(item["label"][None].float())[0].long()
            if "atlas_image" in item:
                carried = normalise_intensity(item["atlas_image"], self.intensity)
                item["atlas_image"] = self._to_net(carried[None])
                item["atlas_label"] = self._to_net(item["atlas_label"][None].float())[0].long()
        return items

    def atlas_of(self, item: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(atlas image (1, *net grid), atlas label map) an item is conditioned on: its own carried atlas, or the
        atlas as it lies."""
        return item.get("atlas_image", self.atlas_image), item.get("atlas_label", self.atlas_label)

    def make_sampler(
        self,
        items,
        foreground_prob: float,
        augment: bool,
        pipeline: PipelineSettings | None = None,
        device: torch.device | None = None,
    ):
        self.items = items
        self.augmentation = build_augmentation(self.spatial_dims, spatial=False) if augment else None
        self.device_batches = None
        self.loader_workers = 0
        if pipeline is not None and pipeline.kind == "device":
            self.device_batches = LCSBatches(
                self, items, pipeline, device or torch.device("cpu"), spacing_mm=self.spacing_mm
            )
            self.loader_workers = self.device_batches.loader_workers
        return self

    def draw_labels(self, rng: np.random.Generator) -> list[int]:
        first = self.values[int(rng.integers(len(self.values)))]
        return self._maybe_merged(rng, first)

    def _maybe_merged(self, rng: np.random.Generator, first: int, taken: set[int] | None = None) -> list[int]:
        """``first``, merged with a partner in ``merge_prob`` of the draws; the partner avoids ``taken``
        (default: ``first`` alone)."""
        others = [v for v in self.values if v not in (taken or {first})]
        chosen = [first]
        if others and rng.random() < self.merge_prob:
            chosen.append(others[int(rng.integers(len(others)))])
        return chosen

    def draw_label_sets(self, rng: np.random.Generator) -> list[list[int]]:
        """The label sets one sampled image is conditioned on this step: ``labels_per_image`` distinct first
        labels (each possibly merged with another). One set draws exactly as ``draw_labels``. For the competing
        loss the sets are disjoint: a voxel's truth is then at most one of them, as a softmax needs."""
        if self.labels_per_image == 1:
            return [self.draw_labels(rng)]
        count = min(self.labels_per_image, len(self.values))
        if self.label_draw == "neighbours":
            firsts = self._first_and_neighbours(rng, count)
        else:
            firsts = [self.values[int(i)] for i in rng.choice(len(self.values), size=count, replace=False)]
        if self.loss_kind != "competing":
            return [self._maybe_merged(rng, first) for first in firsts]
        taken, sets = set(firsts), []
        for first in firsts:
            sets.append(self._maybe_merged(rng, first, taken))
            taken.update(sets[-1])
        return sets

    def _first_and_neighbours(self, rng: np.random.Generator, count: int) -> list[int]:
        """A first label at random, then up to ``count - 1`` of the labels bordering it on the atlas; random
        others fill the rest, so every image has ``count`` labels."""
        first = self.values[int(rng.integers(len(self.values)))]
        near = self.neighbours.get(first, [])
        chosen = [first] + [
            near[int(i)] for i in rng.choice(len(near), size=min(count - 1, len(near)), replace=False)
        ]
        rest = [v for v in self.values if v not in chosen]
        chosen += [rest[int(i)] for i in rng.choice(len(rest), size=count - len(chosen), replace=False)]
        return chosen

    def draw_codes(self, rng: np.random.Generator, label_sets: list[list[int]]) -> list[int]:
        """The code each drawn label set is decoded with: its label's code, or 0 (none) for a merged pair and for
        ``UNCODED_SHARE`` of single labels, so the uncoded path that drawn atlas labels take keeps training. Draws
        nothing from ``rng`` without codes (those runs' draws stay as they were)."""
        if self.code_of is None:
            return []
        return [
            self.code_of[chosen[0]] if len(chosen) == 1 and rng.random() >= UNCODED_SHARE else 0
            for chosen in label_sets
        ]

    def batch(self, seed: int, rank: int, step: int, batch_size: int) -> dict:
        if getattr(self, "device_batches", None) is not None:
            return self.device_batches(seed, rank, step, batch_size)
        rng = step_rng(seed, rank, step)
        images, masks, targets, codes, atlases = [], [], [], [], []
        for _ in range(batch_size):
            item = self.items[int(rng.integers(len(self.items)))]
            label_sets = self.draw_label_sets(rng)
            codes += self.draw_codes(rng, label_sets)
            image = item["image"]
            if self.augmentation is not None:
                self.augmentation.set_random_state(seed=int(rng.integers(2**31)))
                image = torch.as_tensor(self.augmentation({"image": image})["image"]).float()
            images.append(image)
            atlas_image, atlas_label = self.atlas_of(item)
            for chosen in map(torch.tensor, label_sets):
                masks.append(torch.isin(atlas_label, chosen)[None].float())
                targets.append(torch.isin(item["label"], chosen)[None].float())
                atlases.append(atlas_image)
        return {
            "image": torch.stack(images),
            "atlas_mask": torch.stack(masks),
            "target": torch.stack(targets),
            **({"codes": torch.tensor(codes)} if self.code_of is not None else {}),
            **({"atlas_image": torch.stack(atlases)} if self.carries_atlas(self.items) else {}),
        }

    @staticmethod
    def carries_atlas(items: list[dict]) -> bool:
        """Whether the items bring their own atlas (``--align-cases deformable``): then every batch carries one
        atlas image per conditioning."""
        return bool(items) and "atlas_image" in items[0]

    def _atlas_on(self, device: torch.device) -> torch.Tensor:
        """The (1, 1, *grid) atlas image on ``device``, copied there once rather than every step."""
        key, cached = getattr(self, "_atlas_cache", (None, None))
        if key != str(device):
            cached = self.atlas_image[None].to(device)
            self._atlas_cache = (str(device), cached)
        return cached

    def loss(self, model, batch: dict, device: torch.device) -> torch.Tensor:
        image = batch["image"].to(device)
        atlas = batch["atlas_image"].to(device) if "atlas_image" in batch else self._atlas_on(device)
        codes = batch["codes"].to(device) if "codes" in batch else None
        logits = model(image, atlas, batch["atlas_mask"].to(device), codes).float()
        if self.loss_kind == "competing":
            probs = competing_probabilities(logits, per_image=logits.shape[0] // image.shape[0])
        else:
            probs = torch.sigmoid(logits)
        target = batch["target"].to(device)
        dims = tuple(range(1, probs.ndim))
        soft = (2 * (probs * target).sum(dims) + 1.0) / (probs.sum(dims) + target.sum(dims) + 1.0)
        dice = 1.0 - soft.mean()
        if self.loss_kind == "dice-bce":
            return dice + F.binary_cross_entropy_with_logits(logits, target)
        return dice

    @torch.no_grad()
    def validate(self, model, items: list[dict], device: torch.device) -> float:
        """Mean Dice of the validation labels as `segment` decides them: every trained label decoded, each voxel
        given the most probable one, or background below 0.5 (engine.atlas_segmentation). Scoring each label's
        sigmoid alone instead ranked weights by something inference never does (issue #15). ``val_labels``
        caps the labels scored, not those decoded."""
        net = _unwrap(model)
        lookup = torch.tensor(self.values, dtype=torch.int32)
        scores = []
        for item in items:
            atlas_image, atlas_label = self.atlas_of(item)
            atlas = atlas_image[None].to(device)
            encoded = net.encode(item["image"][None].to(device))
            best = torch.zeros(item["label"].shape)
            best_index = torch.zeros(item["label"].shape, dtype=torch.int32)
            for start in range(0, len(self.values), VALIDATION_CHUNK):
                chosen = self.values[start : start + VALIDATION_CHUNK]
                masks = torch.stack([(atlas_label == v)[None].float() for v in chosen]).to(device)
                conditioning = net.condition(atlas, masks)
                if self.code_of is None:
                    logits = net.decode_conditioned(encoded, conditioning)
                else:
                    codes = torch.tensor([self.code_of[v] for v in chosen])
                    logits = net.decode_conditioned(encoded, conditioning, codes)
                probs = torch.sigmoid(logits.float())[:, 0].cpu()
                best, best_index = keep_most_probable(best, best_index, probs, start)
            decided = torch.where(
                best >= LCS_THRESHOLD, lookup[best_index.long()], torch.zeros_like(best_index)
            )
            # scored on the atlas grid: inference crops the padding away too
            decided, truth = self.crop(decided), self.crop(item["label"])
            for value in self.val_values:
                score = dice_score((decided == value).numpy(), (truth == value).numpy())
                if not math.isnan(score):
                    scores.append(score)
        return float(np.mean(scores)) if scores else float("nan")


def competing_probabilities(logits: torch.Tensor, per_image: int) -> torch.Tensor:
    """(B * K, 1, ...) logits, K consecutive ones conditioned on one image -> (B * K, 1, ...) probabilities of one
    softmax per image over its K logits and a fixed 0 logit for 'none of them'.

    Inference gives a voxel the label of the largest logit, or background where no sigmoid reaches 0.5, i.e. no
    logit beats 0: exactly the argmax of this softmax. With K = 1 it is the sigmoid."""
    grouped = logits.reshape(-1, per_image, *logits.shape[2:])
    none = torch.zeros_like(grouped[:, :1])
    probs = torch.softmax(torch.cat([grouped, none], dim=1), dim=1)[:, :per_image]
    return probs.reshape(logits.shape)


def atlas_neighbours(atlas_label: np.ndarray, values: list[int]) -> dict[int, list[int]]:
    """For each label value, the other values among ``values`` that touch it face to face on the atlas grid."""
    wanted = np.asarray(sorted(values))
    pairs = []
    for axis in range(atlas_label.ndim):
        lower = np.moveaxis(atlas_label, axis, 0)[:-1].ravel()
        upper = np.moveaxis(atlas_label, axis, 0)[1:].ravel()
        differ = (lower != upper) & np.isin(lower, wanted) & np.isin(upper, wanted)
        pairs.append(np.stack([lower[differ], upper[differ]], axis=1))
    found = np.unique(np.concatenate(pairs), axis=0)
    neighbours: dict[int, set[int]] = {int(v): set() for v in wanted}
    for a, b in found:
        neighbours[int(a)].add(int(b))
        neighbours[int(b)].add(int(a))
    return {v: sorted(near) for v, near in neighbours.items()}


def voronoi_seeds(mask: np.ndarray, affine: np.ndarray, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``parts`` world points (RAS mm, (parts, 3)) drawn among a label's voxels: the seeds of a random split."""
    voxels = np.argwhere(np.asarray(mask))
    if voxels.shape[0] == 0:
        raise ValueError("cannot split an empty label")
    chosen = voxels[rng.choice(voxels.shape[0], size=min(parts, voxels.shape[0]), replace=False)]
    return chosen @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def voronoi_split(mask: np.ndarray, affine: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Split a label into the Voronoi cells of world-coordinate seeds: bool (len(seeds), *grid) that tile the
    label exactly (disjoint, union = the label). The same seeds split the atlas and a target alike, so a network
    learns to follow masks finer than any label it was trained on."""
    mask = np.asarray(mask, dtype=bool)
    voxels = np.argwhere(mask)
    world = voxels @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    nearest = np.argmin(((world[:, None, :] - np.asarray(seeds)[None]) ** 2).sum(axis=-1), axis=1)
    out = np.zeros((len(seeds), *mask.shape), dtype=bool)
    out[(nearest, *voxels.T)] = True
    return out
