"""A torchvision transform read as the loader's settings, so that ``DALILoader(ImageFolder(root, transform=T))``
runs ``T`` in the DALI pipeline.

The pipeline has one training graph (random-resized-crop, horizontal flip at 0.5) and one evaluation graph
(resize of the shorter side, center crop), then scaling to [0, 1] and normalization. A transform made of
the same steps, v1 or v2, in a ``Compose`` or a preset that holds one in ``.transforms``
(``RandomResizedCrop``, ``Resize``, ``CenterCrop``, ``RandomHorizontalFlip``, ``ToTensor`` /
``PILToTensor`` / ``ToImage``, ``ToDtype`` / ``ConvertImageDtype``, ``Normalize``), is read as those
settings; any other step is refused, named, rather than skipped. DALI's own
``nvidia.dali.experimental.torchvision`` reimplements these classes for tensors fed to a pipeline one batch
at a time; here the graph reads and decodes the files itself, so the user's own objects are translated.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["settings_from_transform"]

_FLOAT = (torch.float32, torch.float16, torch.bfloat16)


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


def settings_from_transform(transform) -> dict[str, Any]:
    """The loader's settings (``size``, ``train``, ``crop_ratio``, ``random_area``, ``random_aspect_ratio``,
    ``mean``, ``std``, ``dtype``) that reproduce ``transform``; a ``ValueError`` naming the step that the
    pipeline does not have.

    Example:
        >>> from torchvision import transforms as T
        >>> settings_from_transform(T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()]))["crop_ratio"]
        0.875
    """
    out: dict[str, Any] = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "dtype": torch.float32}
    resize = flip = None
    tensor = scaled = False
    for step in _steps(transform):
        name = _name(step)
        if name in ("RandomResizedCrop", "Resize", "CenterCrop"):
            if name != "CenterCrop" and _interpolation(step) != "bilinear":
                raise _refuse(step, f"the pipeline resizes with an antialiased bilinear filter, not "
                                    f"{_interpolation(step)}")
            if name != "CenterCrop" and getattr(step, "antialias", True) is False:
                raise _refuse(step, "the pipeline's resize is always antialiased (antialias=True)")
        if tensor and name in ("RandomResizedCrop", "Resize", "CenterCrop", "RandomHorizontalFlip"):
            raise _refuse(step, "geometry after the conversion to a tensor: put it before ToTensor / ToImage")
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
            if float(step.p) != 0.5 or flip is not None:
                raise _refuse(step, "the training graph flips with probability 0.5, once")
            flip = True
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
            out |= {"mean": tuple(map(float, step.mean)), "std": tuple(map(float, step.std))}
        else:
            raise _refuse(step, "the pipeline has random-resized-crop, resize + center crop, horizontal flip, "
                                "conversion to float and Normalize; apply other steps to the batch, on the device")
    if "size" not in out:
        raise ValueError(f"transform {transform!r} has no crop: DALILoader needs RandomResizedCrop(size) (training) "
                         f"or Resize(int) + CenterCrop(size) (evaluation) to batch images of one size")
    if tensor and not scaled:
        raise ValueError(f"transform {transform!r} ends in uint8 tensors: DALILoader delivers floats in [0, 1], "
                         f"normalized; add ToDtype(torch.float32, scale=True)")
    if out["train"] and flip is None:
        raise ValueError(f"transform {transform!r}: the training graph flips horizontally at 0.5; add "
                         f"RandomHorizontalFlip() after RandomResizedCrop")
    if not out["train"] and flip:
        raise ValueError(f"transform {transform!r}: the evaluation graph does not flip")
    return out
