"""The ``preprocessing`` section of a bundle as typed, validated objects.

Modelled on nnU-Net's ``ConfigurationManager``: the JSON stays the storage format, code reads typed
attributes. Construction validates (types, ranges, sane upper bounds), so a config that exists is usable;
``from_dict`` adds the file name to the error. What the fields do is applied in :mod:`.preprocessing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from .config_checks import (
    check_bool,
    check_choice,
    check_int,
    check_int_tuple,
    check_mapping,
    check_number,
    check_number_tuple,
    in_source,
    require,
)
from .errors import ConfigError
from .modality import MODALITIES, WEIGHTINGS

INTENSITY_MODES = ("zscore", "percentile", "ct_window", "none")
# Generous bounds: far beyond any real model, small enough that nothing absurd gets allocated.
MAX_PATCH_SIDE = 2048
MAX_PATCH_VOXELS = 2**27  # 512 MiB per float32 channel
MIN_SPACING_MM, MAX_SPACING_MM = 1e-6, 1e4
_AXIS_PAIRS = ({"L", "R"}, {"P", "A"}, {"I", "S"})


@dataclass(frozen=True)
class IntensityConfig:
    """Intensity normalisation. ``zscore``: mean/std (over non-zero voxels when ``nonzero``);
    ``percentile``: clip to the ``lower``/``upper`` percentiles, scale to 0..1; ``ct_window``: clip to
    ``window`` [lo, hi], scale to 0..1; ``none``. Only the active mode's settings are written."""

    mode: str = "zscore"
    nonzero: bool = False
    lower: float = 0.5
    upper: float = 99.5
    window: tuple[float, float] = (-1000.0, 1000.0)

    _FIELDS: ClassVar[tuple[str, ...]] = ("mode", "nonzero", "lower", "upper", "window")
    _OF_MODE: ClassVar[dict[str, tuple[str, ...]]] = {
        "zscore": ("nonzero",),
        "percentile": ("lower", "upper"),
        "ct_window": ("window",),
        "none": (),
    }

    def __post_init__(self) -> None:
        where = "preprocessing.intensity"
        check_choice(f"{where}.mode", self.mode, INTENSITY_MODES)
        check_bool(f"{where}.nonzero", self.nonzero)
        lower = check_number(f"{where}.lower", self.lower, 0.0, 100.0)
        upper = check_number(f"{where}.upper", self.upper, 0.0, 100.0)
        if lower >= upper:
            raise ConfigError(f"{where}: lower percentile {lower} must be below upper {upper}")
        lo, hi = check_number_tuple(f"{where}.window", self.window, range(2, 3), -1e7, 1e7)
        if lo >= hi:
            raise ConfigError(f"{where}.window must be [low, high] with low < high (got {[lo, hi]})")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "window", (lo, hi))

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> IntensityConfig:
        with in_source(source):
            data = check_mapping("preprocessing.intensity", data, cls._FIELDS)
            if isinstance(data.get("window"), list):
                data["window"] = tuple(data["window"])
            return cls(**data)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"mode": self.mode}
        for name in self._OF_MODE[self.mode]:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class Preprocessing:
    """Model grid and input handling of a bundle: ``spacing`` (mm per axis), ``patch_size`` (voxels, the
    sliding-window size), ``orientation`` (axis codes 3D images are reoriented to), ``overlap`` of the
    sliding windows, the intensity normalisation, ``modality``, the kind of scan trained on ('MR', 'CT' or
    None: not declared; :mod:`.modality` refuses scans that plainly are not that kind) and, for MR, ``contrast``,
    its weighting ('T1', 'T2', 'FLAIR', 'PD' or None; a DICOM header revealing another one is warned about).
    2D bundles give two values per list."""

    spatial_dims: int
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    orientation: str = "RAS"
    overlap: float = 0.5
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    modality: str | None = None
    contrast: str | None = None

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "spatial_dims",
        "spacing",
        "patch_size",
        "orientation",
        "overlap",
        "intensity",
        "modality",
        "contrast",
    )

    def __post_init__(self) -> None:
        dims = check_int("preprocessing.spatial_dims", self.spatial_dims, 2, 3)
        lengths = range(dims, dims + 1)
        spacing = check_number_tuple(
            "preprocessing.spacing", self.spacing, lengths, MIN_SPACING_MM, MAX_SPACING_MM
        )
        patch = check_int_tuple("preprocessing.patch_size", self.patch_size, lengths, 1, MAX_PATCH_SIDE)
        voxels = 1
        for side in patch:
            voxels *= side
        if voxels > MAX_PATCH_VOXELS:
            raise ConfigError(
                f"preprocessing.patch_size {list(patch)} holds {voxels} voxels, more than {MAX_PATCH_VOXELS}"
            )
        orientation = self.orientation
        if not (
            isinstance(orientation, str)
            and len(orientation) == 3
            and set(orientation) <= set().union(*_AXIS_PAIRS)
            and all(len(set(orientation) & pair) == 1 for pair in _AXIS_PAIRS)
        ):
            raise ConfigError(
                f"preprocessing.orientation must be three axis codes, one each of R/L, A/P, S/I "
                f"(got {orientation!r})"
            )
        check_number("preprocessing.overlap", self.overlap, 0.0, 0.95)
        if not isinstance(self.intensity, IntensityConfig):
            raise ConfigError("preprocessing.intensity must be an intensity configuration")
        if self.modality is not None:
            check_choice("preprocessing.modality", self.modality, MODALITIES)
            if self.intensity.mode == "ct_window" and self.modality != "CT":
                raise ConfigError(
                    f"preprocessing.modality {self.modality} contradicts intensity mode ct_window (a CT window)"
                )
        if self.contrast is not None:
            check_choice("preprocessing.contrast", self.contrast, WEIGHTINGS)
            if self.modality != "MR":
                raise ConfigError("preprocessing.contrast is an MR weighting: it needs modality MR")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "patch_size", patch)
        object.__setattr__(self, "overlap", float(self.overlap))

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> Preprocessing:
        """Read a ``preprocessing`` JSON object; ConfigError names ``source`` and the field on any problem."""
        with in_source(source):
            data = check_mapping("preprocessing", data, cls._FIELDS)
            for key in ("spatial_dims", "spacing", "patch_size"):
                require("preprocessing", data, key)
            for key in ("spacing", "patch_size"):
                if isinstance(data[key], list):
                    data[key] = tuple(data[key])
            data["intensity"] = IntensityConfig.from_dict(data.get("intensity", {}))
            return cls(**data)

    def to_dict(self) -> dict:
        return {
            "spatial_dims": self.spatial_dims,
            "orientation": self.orientation,
            "spacing": list(self.spacing),
            "patch_size": list(self.patch_size),
            "overlap": self.overlap,
            "intensity": self.intensity.to_dict(),
            **({} if self.modality is None else {"modality": self.modality}),
            **({} if self.contrast is None else {"contrast": self.contrast}),
        }

    @property
    def scan_modality(self) -> str | None:
        """The kind of scan this bundle expects: the declared one, CT for a CT window, else None."""
        if self.modality is not None:
            return self.modality
        return "CT" if self.intensity.mode == "ct_window" else None

    def replace(self, **changes: Any) -> Preprocessing:
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)
