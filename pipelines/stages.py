"""Small pipeline stages shared by every reader: decode, crop/resize, flip, normalize."""

from __future__ import annotations

from collections.abc import Sequence

from nvidia.dali import fn, types

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MAX_PIXELS", "decode", "decoder_device", "normalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 178_956_970  # PIL's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): ~537 MB as RGB

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
    max_pixels: int = MAX_PIXELS,
):
    """Decodes at native resolution and brings every image to ``size`` (height, width), HWC uint8.

    Returns ``(images, oversize)``: an image of more than ``max_pixels`` (read from its header) is not
    decoded at all; a black placeholder takes its place and ``oversize`` is True for it, so memory
    stays bounded and the caller can name the file. (Needs ``enable_conditionals=True``.)

    Training: random-resized-crop, decoding only the crop window (ROI decode). Evaluation: resize, keeping
    the aspect ratio, to cover ``size / crop_ratio`` (the shorter side to ``size / crop_ratio`` for a
    square); the center crop happens in :func:`normalize`. The resize is
    antialiased, so a large downscale does not alias. Every later op runs on the decoder's device.
    """
    shape = fn.peek_image_shape(encoded)  # (H, W, C) from the header, nothing decoded
    oversize = fn.cast(shape[0], dtype=types.INT64) * fn.cast(shape[1], dtype=types.INT64) > max_pixels
    if oversize:
        images = fn.reshape(fn.constant(idata=[0, 0, 0], shape=[1, 1, 3], dtype=types.UINT8), layout="HWC")
        if device == "mixed":
            images = images.gpu()
    elif train:
        images = fn.decoders.image_random_crop(
            encoded,
            device=device,
            output_type=types.RGB,
            random_area=list(random_area),
            random_aspect_ratio=list(random_aspect_ratio),
            num_attempts=10,
        )
    else:
        images = fn.decoders.image(encoded, device=device, output_type=types.RGB)
    if train:
        return fn.resize(images, size=list(size), interp_type=interp_type, antialias=True), oversize
    cover = [s / crop_ratio for s in size]  # keeps the aspect ratio; no side ends up smaller than this
    return fn.resize(images, size=cover, mode="not_smaller", interp_type=interp_type, antialias=True), oversize


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
