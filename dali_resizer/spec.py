"""One description of what the loader's DALI graph does to each image, frozen and checked once.

A :class:`TransformSpec` is built from the loader's arguments or from a translated torchvision transform
(``dali_resizer.transforms``), handed whole to the pipeline (``pipelines.decode``, ``augment``,
``normalize`` read it), and saved, as :meth:`TransformSpec.identity`, in the loader's state, where a
mid-epoch resume checks it. Adding an operation touches this class and the stage that runs it. As timm's
``resolve_data_config`` feeds ``create_transform``, the spec is the one place the settings live.

The graph, in order:

1. decode at native resolution; training: random-resized-crop (``random_area``,
   ``random_aspect_ratio``), evaluation: resize to cover ``size / crop_ratio`` and center crop; each
   resize antialiased, with ``interpolation``;
2. training only: horizontal flip (``hflip``), ``auto_augment`` (TrivialAugmentWide, RandAugment or
   AutoAugment's ImageNet policy, from ``nvidia.dali.auto_aug``), ``color_jitter``;
3. scaling to [0, 1] and ``(x - mean) / std``, in ``dtype`` and ``layout``;
4. training only: random erasing (``random_erase``, ``erase_scale``, ``erase_ratio``, ``erase_value``)
   on the normalized image, as torchvision's ``RandomErasing`` after ``Normalize``.

Every random draw comes from the pipeline's seed, which is ``(seed, epoch)``'s, and is in DALI's
checkpoint: the same epoch gives the same images, and a mid-epoch resume the uninterrupted ones.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from dali_resizer.samples import IMAGENET_MEAN, IMAGENET_STD, MAX_PIXELS

__all__ = ["AUGMENT_INTERPOLATIONS", "AUTO_AUGMENT_POLICIES", "INTERPOLATIONS", "TransformSpec"]

#: ``auto_augment`` values, with torchvision's reference script's names (``--auto-augment``)
AUTO_AUGMENT_POLICIES = ("ta_wide", "ra", "imagenet")
#: ``interpolation`` values (torchvision's ``InterpolationMode`` names that DALI's resize has)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
#: ``augment_interpolation`` values: the auto-augment policies' rotations, shears and shifts (DALI's
#: ``warp_affine``, like torchvision's tensor ``affine``, has these two)
AUGMENT_INTERPOLATIONS = ("nearest", "bilinear")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pair(value, name: str) -> tuple[float, float]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_number(v) for v in value)
            or value[0] > value[1]):
        raise ValueError(f"{name} must be (low, high) numbers with low <= high, got {value!r}")
    return (float(value[0]), float(value[1]))


def _triple(value, name: str) -> tuple[float, float, float]:
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be 3 numbers (one per RGB channel), got {value!r}")
    return tuple(values)


@dataclass(frozen=True)
class TransformSpec:
    """What the graph does to an image (see the module's docstring for the order).

    Args:
        size: output ``(height, width)``.
        train: the training graph (random crop, flip, augmentations) or the evaluation one.
        crop_ratio: evaluation: the center crop's share of the resized side (``Resize(256)`` then
            ``CenterCrop(224)`` is 0.875).
        random_area, random_aspect_ratio: training: ``RandomResizedCrop``'s ``scale`` and ``ratio``.
        interpolation: the resizes' filter: ``"bilinear"``, ``"bicubic"``, ``"nearest"`` or ``"lanczos"``.
        hflip: training: the probability of a horizontal flip.
        auto_augment: training: ``"ta_wide"`` (TrivialAugmentWide), ``"ra"`` (RandAugment with
            ``ra_num_ops`` operations of magnitude ``ra_magnitude``) or ``"imagenet"`` (AutoAugment's
            ImageNet policy); None for none. ``augment_bins``: the magnitude bins (torchvision's 31).
        augment_interpolation: the policies' rotations, shears and shifts: ``"nearest"`` (torchvision's
            classes' default) or ``"bilinear"``; None: ``interpolation`` where it is one of those (as the
            reference script passes its ``--interpolation``), else bilinear.
        color_jitter: training: ``(brightness, contrast, saturation, hue)`` as ``ColorJitter`` takes them
            (each factor drawn from ``[max(0, 1 - v), 1 + v]``, the hue shift from ``[-hue, hue]`` of a
            turn, ``hue <= 0.5``); None for none.
        random_erase: training: the probability that a rectangle of each image is erased; its area's
            share from ``erase_scale``, its aspect ratio from ``erase_ratio`` (log-uniform), filled with
            ``erase_value``: a number in normalized units, as ``RandomErasing(value=...)`` after
            ``Normalize``, or ``"random"``: standard normal noise per pixel (``value="random"``, timm's
            ``re_mode="pixel"``).
        mean, std: per channel, of images scaled to [0, 1].
        dtype: ``"float32"`` or ``"float16"`` (the pipeline's output; bfloat16 is cast by the loader).
        layout: ``"CHW"`` or ``"HWC"`` (for channels-last batches).
        max_pixels: an image of more pixels is not decoded (a placeholder and a status instead).
        roi_decode: decode only the crop's window (see ``pipelines.decode``).
    """

    size: tuple[int, int]
    train: bool
    crop_ratio: float = 0.875
    random_area: tuple[float, float] = (0.08, 1.0)
    random_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    hflip: float = 0.5
    auto_augment: str | None = None
    ra_num_ops: int = 2
    ra_magnitude: int = 9
    augment_bins: int = 31
    augment_interpolation: str | None = None
    color_jitter: tuple[float, float, float, float] | None = None
    random_erase: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    erase_value: float | str = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dtype: str = "float32"
    layout: str = "CHW"
    max_pixels: int = MAX_PIXELS
    roi_decode: bool = True

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen)
        size = self.size
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
            raise ValueError(f"size must be (height, width), two positive ints, got {size!r}")
        put("size", (int(size[0]), int(size[1])))
        if not isinstance(self.train, bool):
            raise ValueError(f"train must be True or False, got {self.train!r}")
        if not _number(self.crop_ratio) or not 0 < self.crop_ratio <= 1:
            raise ValueError(f"crop_ratio must be a number in (0, 1], got {self.crop_ratio!r}")
        put("crop_ratio", float(self.crop_ratio))
        try:
            area = _pair(self.random_area, "random_area")
        except ValueError:
            area = None
        if area is None or not 0 < area[0] <= area[1] <= 1:
            raise ValueError(f"random_area must be (low, high) with 0 < low <= high <= 1, got {self.random_area!r}")
        try:
            aspect = _pair(self.random_aspect_ratio, "random_aspect_ratio")
        except ValueError:
            aspect = None
        if aspect is None or not 0 < aspect[0] <= aspect[1]:
            raise ValueError(f"random_aspect_ratio must be (low, high) with 0 < low <= high, "
                             f"got {self.random_aspect_ratio!r}")
        put("random_area", area)
        put("random_aspect_ratio", aspect)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        augment_interpolation = self.augment_interpolation
        if augment_interpolation is None:
            augment_interpolation = self.interpolation if self.interpolation in AUGMENT_INTERPOLATIONS else "bilinear"
        if augment_interpolation not in AUGMENT_INTERPOLATIONS:
            raise ValueError(f"augment_interpolation must be None or one of {', '.join(AUGMENT_INTERPOLATIONS)} (the "
                             f"rotations' and shears' filters DALI has), got {augment_interpolation!r}")
        put("augment_interpolation", augment_interpolation)
        if not _number(self.hflip) or not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip must be a probability in [0, 1], got {self.hflip!r}")
        put("hflip", float(self.hflip))
        if self.auto_augment is not None and self.auto_augment not in AUTO_AUGMENT_POLICIES:
            raise ValueError(f"auto_augment must be None or one of {', '.join(AUTO_AUGMENT_POLICIES)} "
                             f"(TrivialAugmentWide, RandAugment, AutoAugment's ImageNet policy), "
                             f"got {self.auto_augment!r}")
        for name in ("ra_num_ops", "augment_bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (not isinstance(self.ra_magnitude, int) or isinstance(self.ra_magnitude, bool) or self.ra_magnitude < 0
                or (self.auto_augment == "ra" and self.ra_magnitude >= self.augment_bins)):
            raise ValueError(f"ra_magnitude must be an int in [0, augment_bins={self.augment_bins}), "
                             f"got {self.ra_magnitude!r}")
        if self.color_jitter is not None:
            jitter = self.color_jitter
            if (not isinstance(jitter, (tuple, list)) or len(jitter) != 4
                    or not all(_number(v) and v >= 0 for v in jitter) or jitter[3] > 0.5):
                raise ValueError(f"color_jitter must be (brightness, contrast, saturation, hue), non-negative numbers "
                                 f"with hue <= 0.5, got {jitter!r}")
            put("color_jitter", None if not any(jitter) else tuple(float(v) for v in jitter))
        if not _number(self.random_erase) or not 0 <= self.random_erase <= 1:
            raise ValueError(f"random_erase must be a probability in [0, 1], got {self.random_erase!r}")
        put("random_erase", float(self.random_erase))
        scale = _pair(self.erase_scale, "erase_scale")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"erase_scale must be (low, high) with 0 < low <= high <= 1, got {self.erase_scale!r}")
        ratio = _pair(self.erase_ratio, "erase_ratio")
        if not 0 < ratio[0]:
            raise ValueError(f"erase_ratio must be (low, high) with 0 < low <= high, got {self.erase_ratio!r}")
        put("erase_scale", scale)
        put("erase_ratio", ratio)
        if self.erase_value != "random":
            if not _number(self.erase_value):
                raise ValueError(f"erase_value must be a number (normalized units) or 'random', "
                                 f"got {self.erase_value!r}")
            put("erase_value", float(self.erase_value))
        mean, std = _triple(self.mean, "mean"), _triple(self.std, "std")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")
        put("mean", mean)
        put("std", std)
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if self.layout not in ("CHW", "HWC"):
            raise ValueError(f"layout must be 'CHW' or 'HWC', got {self.layout!r}")
        if not isinstance(self.max_pixels, int) or isinstance(self.max_pixels, bool) or self.max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive int, got {self.max_pixels!r}")
        put("max_pixels", min(self.max_pixels, 2**31 - 1))  # (DALI's int32)
        if not isinstance(self.roi_decode, bool):
            raise ValueError(f"roi_decode must be True or False, got {self.roi_decode!r}")

    def identity(self) -> dict[str, Any]:
        """The settings as plain JSON values (lists for tuples), for a state to save and compare."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}
