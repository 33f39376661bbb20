"""Small pipeline stages shared by every reader: decode, crop/resize, flip, normalize."""

from __future__ import annotations

from collections.abc import Sequence

from nvidia.dali import fn, types

from dali_resizer.samples import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    JPEG_MAX_PIXELS_PER_BYTE,
    MAX_PIXELS,
    STATUS_CUT_SHORT,
    STATUS_NOT_AN_IMAGE,
    STATUS_OK,
    STATUS_OVERSIZE,
)

__all__ = [
    "decode",
    "decoder_device",
    "image_status",
    "normalize",
]


def decoder_device(device_id: int | None) -> str:
    """The decoder backend for a pipeline: ``"mixed"`` (nvJPEG) on a GPU, ``"cpu"`` without one."""
    return "cpu" if device_id is None else "mixed"


def _image_signature(encoded):
    """(any, jpeg): True where the first bytes are those of a format DALI decodes: JPEG, PNG, BMP,
    TIFF, WebP, JPEG 2000 or PNM (GIF, text, HTML and empty files are not); and where they are JPEG's."""
    head = fn.cast(fn.slice(encoded, start=[0], shape=[12], axes=[0], out_of_bounds_policy="pad", fill_values=0),
                   dtype=types.INT32)
    b = [head[i] for i in range(12)]
    jpeg = (b[0] == 0xFF) & (b[1] == 0xD8) & (b[2] == 0xFF)
    png = (b[0] == 0x89) & (b[1] == 0x50) & (b[2] == 0x4E) & (b[3] == 0x47)
    bmp = (b[0] == 0x42) & (b[1] == 0x4D)
    tiff = ((b[0] == 0x49) & (b[1] == 0x49) & (b[2] == 0x2A) & (b[3] == 0)) | (
        (b[0] == 0x4D) & (b[1] == 0x4D) & (b[2] == 0) & (b[3] == 0x2A))
    webp = (b[0] == 0x52) & (b[1] == 0x49) & (b[2] == 0x46) & (b[3] == 0x46) & (
        b[8] == 0x57) & (b[9] == 0x45) & (b[10] == 0x42) & (b[11] == 0x50)
    jp2 = ((b[0] == 0) & (b[1] == 0) & (b[2] == 0) & (b[3] == 0x0C) & (b[4] == 0x6A) & (b[5] == 0x50)) | (
        (b[0] == 0xFF) & (b[1] == 0x4F) & (b[2] == 0xFF) & (b[3] == 0x51))
    pnm = (b[0] == 0x50) & (b[1] >= 0x31) & (b[1] <= 0x36)
    return jpeg | png | bmp | tiff | webp | jp2 | pnm, jpeg


def image_status(encoded, max_pixels: int = MAX_PIXELS, *, replay: bool = False):
    """Per sample: ``STATUS_OK``, ``STATUS_OVERSIZE`` (more than ``max_pixels``, read from the header),
    ``STATUS_NOT_AN_IMAGE`` (empty, or bytes of no format DALI decodes) or ``STATUS_CUT_SHORT`` (a JPEG
    with fewer bytes than its declared size can be coded in: more than ``JPEG_MAX_PIXELS_PER_BYTE``
    pixels a byte, which libjpeg-turbo decodes to grey with only a warning), as uint8, without decoding.

    ``replay=True`` gives every sample a non-OK status and reads no header: the graph is the same
    (only a constant differs), so a pipeline built with it can restore a decoding pipeline's checkpoint
    and list the samples that pipeline was reading, without failing where it failed. (Needs
    ``enable_conditionals=True``.)
    """
    size = encoded.shape(dtype=types.INT64)[0]
    has_bytes = size * (0 if replay else 1) >= 1
    known, jpeg = _image_signature(encoded)
    if known & has_bytes:
        shape = fn.peek_image_shape(encoded)  # (H, W, C) from the header, nothing decoded
        area = fn.cast(shape[0], dtype=types.INT64) * fn.cast(shape[1], dtype=types.INT64)
        oversize = fn.cast(area > max_pixels, dtype=types.UINT8)
        cut = fn.cast(jpeg & (area > size * JPEG_MAX_PIXELS_PER_BYTE), dtype=types.UINT8)
        status = oversize * STATUS_OVERSIZE + (1 - oversize) * cut * STATUS_CUT_SHORT
    else:
        status = fn.cast(has_bytes, dtype=types.UINT8) * 0 + STATUS_NOT_AN_IMAGE  # (a per-sample constant)
    return status


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
    replay: bool = False,
):
    """Decodes at native resolution and brings every image to ``size`` (height, width), HWC uint8.

    Returns ``(images, status)`` (see :func:`image_status`): an image over ``max_pixels`` or bytes that
    are not an image are not decoded at all; a black placeholder takes their place and ``status``
    says why, so memory stays bounded and the caller can name the sample. ``replay=True`` decodes
    nothing (see :func:`image_status`). (Needs ``enable_conditionals=True``.)

    Training: random-resized-crop, decoding only the crop window (ROI decode). Evaluation: resize, keeping
    the aspect ratio, to cover ``size / crop_ratio`` (the shorter side to ``size / crop_ratio`` for a
    square); the center crop happens in :func:`normalize`. The resize is
    antialiased, so a large downscale does not alias. Every later op runs on the decoder's device.
    """
    status = image_status(encoded, max_pixels, replay=replay)
    if status == STATUS_OK:
        if train:
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
    else:
        images = fn.reshape(fn.constant(idata=[0, 0, 0], shape=[1, 1, 3], dtype=types.UINT8), layout="HWC")
        if device == "mixed":
            images = images.gpu()
    if train:
        return fn.resize(images, size=list(size), interp_type=interp_type, antialias=True), status
    cover = [s / crop_ratio for s in size]  # keeps the aspect ratio; no side ends up smaller than this
    return fn.resize(images, size=cover, mode="not_smaller", interp_type=interp_type, antialias=True), status


def normalize(
    images,
    *,
    size: tuple[int, int],
    train: bool,
    dtype: types.DALIDataType = types.FLOAT,
    layout: str = "CHW",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
):
    """Center crop to ``size`` (a no-op after a training decode), random horizontal flip when training,
    ``(x / 255 - mean) / std``, HWC to ``layout`` (``"CHW"``, or ``"HWC"`` for channels-last batches)."""
    if layout not in ("CHW", "HWC"):
        raise ValueError(f"layout must be 'CHW' or 'HWC', got {layout!r}")
    mirror = fn.random.coin_flip(probability=0.5) if train else 0
    return fn.crop_mirror_normalize(
        images,
        crop=list(size),
        mirror=mirror,
        mean=[255 * m for m in mean],
        std=[255 * s for s in std],
        dtype=dtype,
        output_layout=layout,
    )
