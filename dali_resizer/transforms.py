"""A torchvision transform read as the loader's settings, so that ``DALILoader(ImageFolder(root, transform=T))``
runs ``T`` in the DALI pipeline.

The pipeline has one training graph (random-resized-crop, horizontal flip, an auto-augment policy, colour
jitter, then scaling to [0, 1], normalization and random erasing) and one evaluation graph (resize of the
shorter side, center crop, scaling and normalization): a :class:`~dali_resizer.spec.TransformSpec`. A
transform made of the same steps, v1 or v2, in a ``Compose`` or a preset that holds its steps in
``.transforms`` (torchvision's reference ``ClassificationPresetTrain`` / ``Eval``), is read as that spec's
settings:

- ``RandomResizedCrop``, ``Resize(int)`` + ``CenterCrop``: the crop, its size and ``interpolation``;
- ``RandomHorizontalFlip(p)``: ``hflip``;
- ``TrivialAugmentWide``, ``RandAugment``, ``AutoAugment(IMAGENET)``: ``auto_augment`` and its settings;
- ``ColorJitter``: ``color_jitter``;
- ``ToTensor`` / ``PILToTensor`` / ``ToImage``, ``ToDtype`` / ``ConvertImageDtype``, ``ToPureTensor``;
- ``Normalize``: ``mean``, ``std``; ``RandomErasing`` after it: ``random_erase`` and its settings.

Any other step, or one the graph would run differently (a per-channel erasing value, a lopsided jitter
range, an image op after the conversion to floats), is refused, named, rather than skipped. DALI's own
``nvidia.dali.experimental.torchvision`` reimplements these classes for tensors fed to a pipeline one
batch at a time; here the graph reads and decodes the files itself, so the user's own objects are
translated.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from dali_resizer.spec import AUGMENT_INTERPOLATIONS, INTERPOLATIONS

__all__ = ["settings_from_transform"]

_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
_CROPS = ("RandomResizedCrop", "Resize", "CenterCrop")
_POLICIES = {"TrivialAugmentWide": "ta_wide", "RandAugment": "ra", "AutoAugment": "imagenet"}
_IMAGE_OPS = ("RandomHorizontalFlip", "ColorJitter", *_POLICIES)  # (on the cropped uint8 image)


def _name(step) -> str:
    return type(step).__name__


def _interpolation(step) -> str:
    mode = getattr(step, "interpolation", "bilinear")
    return str(getattr(mode, "value", mode)).lower()


def _steps(transform) -> list:
    """The transform's steps: ``Compose`` flattened, and so is an object that holds its steps in
    ``.transforms`` and applies them (torchvision's ``ClassificationPresetTrain`` / ``Eval``)."""
    if isinstance(transform, (list, tuple)):
        return [s for step in transform for s in _steps(step)]
    if _name(transform) == "Compose" or (callable(transform) and hasattr(transform, "transforms")):
        return _steps(transform.transforms)
    return [transform]


def _refuse(step, why: str) -> ValueError:
    return ValueError(f"transform step {step!r} cannot run in DALILoader's pipeline: {why}")


def _pair(value) -> tuple[int, int]:
    value = list(value) if isinstance(value, (tuple, list)) else [value]
    return (int(value[0]), int(value[-1]))


def _one_value(step, value, what: str) -> float | None:
    """A fill given as a number, or the same number for each channel (None stays None)."""
    if value is None or isinstance(value, (int, float)):
        return value
    values = {float(v) for v in value} if isinstance(value, (tuple, list)) else None
    if not values or len(values) != 1:
        raise _refuse(step, f"the graph fills with one number for every channel, not {what}={value!r}")
    return values.pop()


def _policy(step) -> dict[str, Any]:
    """``auto_augment`` and its settings from TrivialAugmentWide, RandAugment or AutoAugment."""
    fill = _one_value(step, getattr(step, "fill", None), "fill")
    if fill not in (None, 0):
        raise _refuse(step, "the policies fill the uncovered corners with 0 (fill=None, as torchvision's default)")
    mode = _interpolation(step)
    if mode not in AUGMENT_INTERPOLATIONS:
        if mode != "bicubic":
            raise _refuse(step, f"the policies' rotations and shears interpolate with nearest or bilinear, not {mode}")
        warnings.warn(f"{step!r}: the graph's rotations, shears and shifts interpolate bilinearly, not bicubically "
                      f"(DALI's warp_affine has nearest and bilinear; torchvision's tensor affine too)", stacklevel=4)
        mode = "bilinear"
    out: dict[str, Any] = {"auto_augment": _POLICIES[_name(step)], "augment_interpolation": mode}
    if _name(step) == "AutoAugment":
        policy = str(getattr(step.policy, "value", step.policy)).lower()
        if policy != "imagenet":
            raise _refuse(step, f"the graph has AutoAugment's ImageNet policy, not {policy}")
    else:
        out["augment_bins"] = int(step.num_magnitude_bins)
    if _name(step) == "RandAugment":
        out |= {"ra_num_ops": int(step.num_ops), "ra_magnitude": int(step.magnitude)}
    return out


def _jitter(step) -> tuple[float, float, float, float]:
    """``ColorJitter``'s stored ranges, ``(max(0, 1 - v), 1 + v)`` and ``(-hue, hue)``, as the four
    numbers it was built from."""
    values = []
    for name in ("brightness", "contrast", "saturation", "hue"):
        bounds = getattr(step, name)
        if bounds is None:
            values.append(0.0)
            continue
        low, high = (float(b) for b in bounds)
        v = round(high if name == "hue" else high - 1, 12)  # (1.3 - 1 is 0.30000000000000004)
        if not math.isclose(low, -v if name == "hue" else max(0.0, 1 - v), abs_tol=1e-9) or v < 0:
            raise _refuse(step, f"the graph draws {name} from a range centred on "
                                f"{'0' if name == 'hue' else '1'} (ColorJitter({name}=v)), not [{low}, {high}]")
        values.append(v)
    return tuple(values)


def _erasing(step) -> dict[str, Any]:
    value = step.value
    if value is None or value == "random":  # (v2 stores "random" as None)
        value = "random"
    else:
        value = _one_value(step, value, "value")
    return {"random_erase": float(step.p), "erase_scale": tuple(map(float, step.scale)),
            "erase_ratio": tuple(map(float, step.ratio)), "erase_value": value}


def settings_from_transform(transform) -> dict[str, Any]:
    """The loader's settings (``size``, ``train``, the crop's, ``interpolation``, ``hflip``, the
    augmentations', ``mean``, ``std``, ``dtype``) that reproduce ``transform``; a ``ValueError`` naming the
    step that the pipeline does not have.

    Example:
        >>> from torchvision import transforms as T
        >>> settings_from_transform(T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()]))["crop_ratio"]
        0.875
    """
    out: dict[str, Any] = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "dtype": torch.float32, "hflip": 0.0,
                           "auto_augment": None, "color_jitter": None, "random_erase": 0.0}
    resize = None
    seen: set[str] = set()
    tensor = scaled = False
    for step in _steps(transform):
        name = _name(step)
        if name in _CROPS and name != "CenterCrop":
            mode = _interpolation(step)
            if mode not in INTERPOLATIONS:
                raise _refuse(step, f"the pipeline resizes with {', '.join(INTERPOLATIONS)}, not {mode}")
            if getattr(step, "antialias", True) is False:
                raise _refuse(step, "the pipeline's resize is always antialiased (antialias=True)")
            out["interpolation"] = mode
        if scaled and name in _CROPS + _IMAGE_OPS:
            raise _refuse(step, "an image step after the conversion to floats: put it before ToTensor / ToDtype")
        if name in _IMAGE_OPS:
            if "size" not in out:
                raise _refuse(step, "the graph augments the crop: put it after RandomResizedCrop")
            if name in seen or (name in _POLICIES and seen & set(_POLICIES)):
                raise _refuse(step, "a second one (the graph runs each augmentation once)")
            if name in _POLICIES and "ColorJitter" in seen:
                raise _refuse(step, "the graph jitters colour after the auto-augment policy: put ColorJitter after it")
            seen.add(name)
        if name == "RandomResizedCrop":
            if "size" in out:
                raise _refuse(step, "a second crop")
            out |= {"train": True, "size": _pair(step.size), "random_area": tuple(map(float, step.scale)),
                    "random_aspect_ratio": tuple(map(float, step.ratio))}
        elif name == "Resize":
            if "size" in out or resize is not None:
                raise _refuse(step, "a resize after a crop, or a second resize")
            size = step.size
            if isinstance(size, (tuple, list)) and len(size) == 2 or getattr(step, "max_size", None) is not None:
                raise _refuse(step, "the evaluation graph resizes the shorter side to an int (Resize(256)), "
                                    "keeping the aspect ratio")
            resize = int(size[0] if isinstance(size, (tuple, list)) else size)
        elif name == "CenterCrop":
            if resize is None or "size" in out:
                raise _refuse(step, "the evaluation graph center-crops after Resize(int) only")
            height, width = _pair(step.size)
            if height != width:
                raise _refuse(step, "the evaluation graph's crop is square, Resize(s) then CenterCrop(c)")
            out |= {"train": False, "size": (height, width), "crop_ratio": height / resize}
        elif name == "RandomHorizontalFlip":
            out["hflip"] = float(step.p)
        elif name in _POLICIES:
            out |= _policy(step)
        elif name == "ColorJitter":
            out["color_jitter"] = _jitter(step)
        elif name in ("ToTensor", "ToImage", "PILToTensor", "ToImageTensor"):
            tensor, scaled = True, scaled or name == "ToTensor"
        elif name in ("ToDtype", "ConvertImageDtype"):
            dtype = step.dtype.get(torch.Tensor, None) if isinstance(step.dtype, dict) else step.dtype
            if dtype not in _FLOAT or (name == "ToDtype" and not step.scale):
                raise _refuse(step, "the pipeline delivers float32, float16 or bfloat16 images scaled to [0, 1] "
                                    "(ToDtype(torch.float32, scale=True))")
            out["dtype"], scaled = dtype, True
        elif name == "Normalize":
            if not scaled:
                raise _refuse(step, "Normalize before the images are floats in [0, 1]")
            if "RandomErasing" in seen:
                raise _refuse(step, "the graph erases the normalized image: put RandomErasing after Normalize, "
                                    "as the reference script does")
            out |= {"mean": tuple(map(float, step.mean)), "std": tuple(map(float, step.std))}
        elif name == "RandomErasing":
            if not scaled or "RandomErasing" in seen:
                raise _refuse(step, "the graph erases once, after the conversion to floats (and Normalize)")
            seen.add(name)
            out |= _erasing(step)
        elif name != "ToPureTensor":
            raise _refuse(step, "the pipeline has random-resized-crop, resize + center crop, horizontal flip, "
                                "TrivialAugmentWide / RandAugment / AutoAugment, ColorJitter, conversion to float, "
                                "Normalize and RandomErasing; apply other steps to the batch, on the device")
    if "size" not in out:
        raise ValueError(f"transform {transform!r} has no crop: DALILoader needs RandomResizedCrop(size) (training) "
                         f"or Resize(int) + CenterCrop(size) (evaluation) to batch images of one size")
    if tensor and not scaled:
        raise ValueError(f"transform {transform!r} ends in uint8 tensors: DALILoader delivers floats in [0, 1], "
                         f"normalized; add ToDtype(torch.float32, scale=True)")
    if not out["train"] and seen:
        raise ValueError(f"transform {transform!r}: the evaluation graph (Resize + CenterCrop) does not augment; "
                         f"{', '.join(sorted(seen))} belong to a training transform (RandomResizedCrop)")
    return out
