"""Random smooth spatial deformations (affine + elastic) and MR-like intensity variation, defined in world
millimetres so the same seed gives the same anatomy change at every output spacing.

Interpolation is done by scipy (``ndimage.zoom`` for smooth fields, ``ndimage.map_coordinates`` for sampling):
images linearly, labels nearest-neighbour, both through the same coordinate map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class WorldBox:
    """Axis-aligned box in RAS millimetres on which smooth random fields are defined."""

    low: np.ndarray  # (3,)
    high: np.ndarray  # (3,)

    @property
    def center(self) -> np.ndarray:
        return (self.low + self.high) / 2.0


class SmoothField:
    """A smooth random scalar field on a box: random values on a coarse control grid, cubic-upsampled to a
    4 mm grid once, then evaluated anywhere by linear interpolation of that grid."""

    FINE_MM = 4.0

    def __init__(self, rng: np.random.Generator, box: WorldBox, control_mm: float, std: float):
        extent = box.high - box.low
        control_shape = np.maximum(np.ceil(extent / control_mm).astype(int) + 1, 2)
        control = rng.normal(0.0, std, size=tuple(control_shape))
        fine_shape = np.maximum(np.ceil(extent / self.FINE_MM).astype(int) + 1, 2)
        self._grid = ndimage.zoom(
            control, fine_shape / control_shape, order=3, mode="nearest", grid_mode=False
        )
        self._low = box.low
        self._step = extent / (np.asarray(self._grid.shape) - 1)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Field values at world points of shape (3, ...)."""
        index = (points - self._low.reshape((3,) + (1,) * (points.ndim - 1))) / self._step.reshape(
            (3,) + (1,) * (points.ndim - 1)
        )
        return ndimage.map_coordinates(self._grid, index, order=1, mode="nearest").astype(np.float32)


@dataclass(frozen=True)
class DeformationParams:
    rotation_deg: float = 8.0
    scale: float = 0.08
    shear: float = 0.03
    translation_mm: float = 4.0
    elastic_control_mm: float = 30.0
    elastic_std_mm: float = 2.5


class RandomDeformation:
    """Maps output world points to source world points: ``c + M (p - c) + t + d(p)`` with M a random
    rotation*scale*shear about the box centre c, t a translation and d a smooth elastic displacement."""

    def __init__(
        self,
        rng: np.random.Generator,
        box: WorldBox,
        params: DeformationParams = DeformationParams(),
        identity: bool = False,
    ):
        self.center = box.center
        if identity:
            self.matrix = np.eye(3)
            self.translation = np.zeros(3)
            self.fields = None
            return
        angles = np.deg2rad(rng.uniform(-params.rotation_deg, params.rotation_deg, size=3))
        rotation = np.eye(3)
        for axis, angle in enumerate(angles):
            a, b = [i for i in range(3) if i != axis]
            r = np.eye(3)
            r[a, a] = r[b, b] = np.cos(angle)
            r[a, b], r[b, a] = -np.sin(angle), np.sin(angle)
            rotation = rotation @ r
        scale = np.diag(rng.uniform(1.0 - params.scale, 1.0 + params.scale, size=3))
        shear = np.eye(3) + np.triu(rng.uniform(-params.shear, params.shear, size=(3, 3)), k=1)
        self.matrix = rotation @ shear @ scale
        self.translation = rng.uniform(-params.translation_mm, params.translation_mm, size=3)
        self.fields = [
            SmoothField(rng, box, params.elastic_control_mm, params.elastic_std_mm) for _ in range(3)
        ]

    def __call__(self, points: np.ndarray) -> np.ndarray:
        shape = points.shape
        flat = points.reshape(3, -1).astype(np.float64)
        moved = self.matrix @ (flat - self.center[:, None]) + self.center[:, None] + self.translation[:, None]
        if self.fields is not None:
            for axis, field in enumerate(self.fields):
                moved[axis] += field(flat)
        return moved.reshape(shape)


def sample(volume: np.ndarray, affine: np.ndarray, points: np.ndarray, *, order: int) -> np.ndarray:
    """Sample ``volume`` (voxel -> world by ``affine``) at world ``points`` (3, ...); zero outside."""
    inverse = np.linalg.inv(affine)
    flat = points.reshape(3, -1)
    index = inverse[:3, :3] @ flat + inverse[:3, 3:4]
    values = ndimage.map_coordinates(
        volume, index.astype(np.float32), order=order, mode="constant", cval=0, prefilter=False
    )
    return values.reshape(points.shape[1:])


@dataclass(frozen=True)
class IntensityParams:
    gamma_log_std: float = 0.25
    bias_std: float = 0.15
    bias_control_mm: float = 60.0
    contrast: float = 0.15
    brightness: float = 0.05
    noise_min: float = 0.01
    noise_max: float = 0.04


def vary_intensity(
    rng: np.random.Generator,
    image: np.ndarray,
    points: np.ndarray,
    box: WorldBox,
    params: IntensityParams = IntensityParams(),
) -> np.ndarray:
    """Gamma, multiplicative smooth bias field, contrast/brightness and Rician noise on a [0, ~1] image."""
    gamma = float(np.exp(rng.normal(0.0, params.gamma_log_std)))
    bias = SmoothField(rng, box, params.bias_control_mm, params.bias_std)
    contrast = rng.uniform(1.0 - params.contrast, 1.0 + params.contrast)
    brightness = rng.uniform(-params.brightness, params.brightness)
    sigma = rng.uniform(params.noise_min, params.noise_max)
    out = np.clip(image, 0.0, None) ** gamma
    out = out * np.exp(bias(points))
    foreground = out > 0
    mean = float(out[foreground].mean()) if foreground.any() else 0.0
    out = np.where(foreground, (out - mean) * contrast + mean + brightness, 0.0)
    out = np.clip(out, 0.0, None)
    real = out + rng.normal(0.0, sigma, size=out.shape)
    imaginary = rng.normal(0.0, sigma, size=out.shape)
    return np.sqrt(real * real + imaginary * imaginary).astype(np.float32)
