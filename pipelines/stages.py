"""Small pipeline stages shared by every reader: decode, crop/resize, flip, normalize."""

from __future__ import annotations

from collections.abc import Sequence

from nvidia.dali import fn, types

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "decode", "decoder_device", "normalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

def decoder_device(device_id: int | None) -> str:
    """The decoder backend for a pipeline: ``"mixed"`` (nvJPEG) on a GPU, ``"cpu"`` without one."""
    return "cpu" if device_id is None else "mixed"


def decode(
    encoded,
    *,
    size: tuple[int, int],
    train: bool,
    device: str = "cpu",
    crop_ratio: float = 0.875,
    random_area: Sequence[float] = (0.08, 1.0),
    random_aspect_ratio: Sequence[float] = (3 / 4, 4 / 3),
    interp_type: types.DALIInterpType = types.INTERP_LINEAR,
):
    """Decodes at native resolution and brings every image to ``size`` (height, width), HWC uint8.

    Training: random-resized-crop, decoding only the crop window (ROI decode). Evaluation: resize, keeping
    the aspect ratio, to cover ``size / crop_ratio`` (the shorter side to ``size / crop_ratio`` for a
    square); the center crop happens in :func:`normalize`. The resize is
    antialiased, so a large downscale does not alias. Every later op runs on the decoder's device.
    """
    if train:
        images = fn.decoders.image_random_crop(
            encoded,
            device=device,
            output_type=types.RGB,
            random_area=list(random_area),
            random_aspect_ratio=list(random_aspect_ratio),
            num_attempts=10,
        )
        return fn.resize(images, size=list(size), interp_type=interp_type, antialias=True)
    images = fn.decoders.image(encoded, device=device, output_type=types.RGB)
    cover = [s / crop_ratio for s in size]  # keeps the aspect ratio; no side ends up smaller than this
    return fn.resize(images, size=cover, mode="not_smaller", interp_type=interp_type, antialias=True)


def normalize(
    images,
    *,
    size: tuple[int, int],
    train: bool,
    dtype: types.DALIDataType = types.FLOAT,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
):
    """Center crop to ``size`` (a no-op after a training decode), random horizontal flip when training,
    ``(x / 255 - mean) / std``, HWC to CHW."""
    mirror = fn.random.coin_flip(probability=0.5) if train else 0
    return fn.crop_mirror_normalize(
        images,
        crop=list(size),
        mirror=mirror,
        mean=[255 * m for m in mean],
        std=[255 * s for s in std],
        dtype=dtype,
        output_layout="CHW",
    )
