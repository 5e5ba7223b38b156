"""Memory of LCS and of a multi-channel U-Net as the label count grows (Ma, Lee, Sabuncu 2022 show it for training and
inference), measured with the project's own networks and losses.

* Training: one optimiser step of ``batch`` volumes with the method's real loss (``TaskMethod`` for multi-channel: one
  output channel per label; ``LCSMethod``: one conditioned label per sample).
* Inference: multi-channel runs one forward pass with all its channels; LCS runs the encoder once and the conditioned
  decoder one label at a time (as the paper), keeping a running maximum. (The engine batches labels up to a memory
  budget, trading memory for speed; that is a setting, not a property of the method.)

On CUDA the figure is ``torch.cuda.max_memory_allocated`` above what was allocated before the phase. The CPU
allocator keeps no such counter, so there every tensor storage that an operation creates is followed (a torch dispatch
mode sees every operation, backward and optimiser included) until it is freed, and the figure is the peak of live
tensor bytes during the phase: the parameters plus whatever the phase allocates (activations, gradients, optimiser
state, temporaries). It counts tensors, not allocator overhead or the rest of the process, so it compares methods and
label counts; it is not what ``top`` shows.
"""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from LabelSharingSegLib.engine.bundle import TaskInfo
from LabelSharingSegLib.engine.labels import LabelInfo, default_color
from LabelSharingSegLib.engine.networks import build_network, network_config_from_dict
from LabelSharingSegLib.engine.preprocessing_config import IntensityConfig, Preprocessing

from ..methods import LCSMethod, TaskMethod


class _LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages alive at once while the mode is active (the ones given at the start included)."""

    def __init__(self, existing) -> None:
        super().__init__()
        self.live: dict = {}
        for tensor in existing:
            self._add(tensor)
        self.peak = self.current = sum(self.live.values())

    def _add(self, tensor) -> None:
        storage = tensor.untyped_storage()
        key = StorageWeakRef(storage)
        if key not in self.live:
            self.live[key] = storage.nbytes()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self._add(tensor)
        for key in [k for k in self.live if k.expired()]:
            del self.live[key]
        self.current = sum(self.live.values())
        self.peak = max(self.peak, self.current)
        return out


def _networks(method: str, labels: int, dims: int, channels: list[int]):
    arch, outputs = ("unet", labels + 1) if method == "multichannel" else ("lcs", 1)
    config = network_config_from_dict(
        {"arch": arch, "spatial_dims": dims, "channels": list(channels), "out_channels": outputs}
    )
    return build_network(config), config


def _inference(method: str, net, labels: int, shape, device) -> None:
    image = torch.randn((1, 1, *shape), device=device)
    with torch.no_grad():
        if method == "multichannel":
            net(image).argmax(1)
            return
        atlas = torch.randn((1, 1, *shape), device=device)
        atlas_labels = torch.randint(0, labels + 1, shape, device=device)
        encoded = net.encode(image)
        best = torch.full(shape, -float("inf"), device=device)
        for value in range(1, labels + 1):
            mask = (atlas_labels == value)[None, None].float()
            best = torch.maximum(best, net.decode_conditioned(encoded, net.condition(atlas, mask))[0, 0])


def _training_step(method: str, net, config, labels: int, shape, batch: int, device) -> None:
    dims = len(shape)
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn((batch, 1, *shape), generator=generator)
    if method == "multichannel":
        infos = tuple(LabelInfo(v, f"label_{v}", default_color(v)) for v in range(1, labels + 1))
        task = TaskInfo("task", 0, infos, {v: v for v in range(1, labels + 1)})
        prep = Preprocessing(spatial_dims=dims, spacing=(1.0,) * dims, patch_size=tuple(shape))
        loss_method = TaskMethod("multichannel", [task], config, prep)
        target = torch.randint(0, labels + 1, (batch, *shape), generator=generator)
        data = {"image": image, "target": target, "task": torch.zeros(batch, dtype=torch.int64)}
    else:
        grid = tuple(shape) if dims == 3 else (*shape, 1)
        atlas_labels = torch.randint(0, labels + 1, grid, generator=generator)
        prep = Preprocessing(
            spatial_dims=dims,
            spacing=(1.0,) * dims,
            patch_size=tuple(shape),
            intensity=IntensityConfig(mode="none"),
        )
        loss_method = LCSMethod(torch.randn(grid), atlas_labels, list(range(1, labels + 1)), config, prep)
        masks = (torch.rand((batch, 1, *shape), generator=generator) > 0.8).float()
        data = {"image": image, "atlas_mask": masks, "target": masks}
    optimiser.zero_grad()
    loss_method.loss(net, data, device).backward()
    optimiser.step()


def measure(
    method: str, labels: int, dims: int, size: int, channels: list[int], batch: int, device: str
) -> dict:
    """Inference and training memory (MB) of one method at one label count on a cubic (square) volume of ``size``."""
    torch.manual_seed(0)
    torch_device = torch.device(device)
    shape = (size,) * dims
    net, config = _networks(method, labels, dims, channels)
    net = net.to(torch_device)
    cuda = torch_device.type == "cuda"
    result = {"method": method, "labels": labels, "parameters": sum(p.numel() for p in net.parameters())}
    for phase in ("inference", "training"):
        net.train(phase == "training")
        if cuda:
            torch.cuda.synchronize(torch_device)
            torch.cuda.reset_peak_memory_stats(torch_device)
            base = torch.cuda.memory_allocated(torch_device)
            _run_phase(phase, method, net, config, labels, shape, batch, torch_device)
            torch.cuda.synchronize(torch_device)
            result[f"{phase}_mb"] = (torch.cuda.max_memory_allocated(torch_device) - base) / 1024**2
        else:
            with _LiveTensorBytes(net.parameters()) as tracker:
                _run_phase(phase, method, net, config, labels, shape, batch, torch_device)
            result[f"{phase}_mb"] = tracker.peak / 1024**2
    result["measure"] = (
        "CUDA max_memory_allocated" if cuda else "peak of live tensor bytes (dispatch tracking)"
    )
    return result


def _run_phase(phase, method, net, config, labels, shape, batch, device) -> None:
    if phase == "inference":
        _inference(method, net, labels, shape, device)
    else:
        _training_step(method, net, config, labels, shape, batch, device)
