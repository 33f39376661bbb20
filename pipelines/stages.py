"""Small pipeline stages shared by every reader: decode, crop/resize, flip, normalize."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import nvidia.dali.math as dmath
from nvidia.dali import fn, types

from dali_resizer.samples import (
    IMAGE_SIGNATURES,
    JPEG_MAX_PIXELS_PER_BYTE,
    MAX_PIXELS,
    STATUS_CUT_SHORT,
    STATUS_NOT_AN_IMAGE,
    STATUS_OK,
    STATUS_OVERSIZE,
)
from dali_resizer.spec import TransformSpec

assert IMAGE_SIGNATURES[0][0] == "JPEG"  # (row 0 of the table is the JPEG test)

__all__ = [
    "augment",
    "center_window",
    "decode",
    "erase",
    "decoder_device",
    "image_status",
    "mixed_decoder_options",
    "normalize",
]


def decoder_device(device_id: int | None) -> str:
    """The decoder backend for a pipeline: ``"mixed"`` (nvJPEG) on a GPU, ``"cpu"`` without one."""
    return "cpu" if device_id is None else "mixed"


_HEAD = 12  # bytes compared: the longest signature's end


def _signature_table() -> tuple[list[int], list[int]]:
    """(patterns, masks) of ``IMAGE_SIGNATURES``, ``rows x _HEAD`` bytes each, flattened: a row matches
    where ``head & mask == pattern``."""
    patterns, masks = [], []
    for _, parts in IMAGE_SIGNATURES:
        pattern, mask = [0] * _HEAD, [0] * _HEAD
        for offset, data in parts:
            pattern[offset : offset + len(data)] = data
            mask[offset : offset + len(data)] = [0xFF] * len(data)
        patterns += pattern
        masks += mask
    return patterns, masks


def _signature_rows(encoded):
    """Per sample, ``(len(IMAGE_SIGNATURES),)`` uint8: 1 where the first bytes are those of that row's
    format (row 0: JPEG). One comparison of the first 12 bytes against a table of every signature: a
    handful of operators per batch, however many formats there are."""
    head = fn.slice(encoded, start=[0], shape=[_HEAD], axes=[0], out_of_bounds_policy="pad", fill_values=0)
    patterns, masks = _signature_table()
    shape = [len(IMAGE_SIGNATURES), _HEAD]
    pattern = fn.constant(idata=patterns, shape=shape, dtype=types.UINT8)
    mask = fn.constant(idata=masks, shape=shape, dtype=types.UINT8)
    return fn.reductions.min(fn.cast((head & mask) == pattern, dtype=types.UINT8), axes=[1])


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
    rows = _signature_rows(encoded)
    if fn.reductions.max(rows) * size * (0 if replay else 1) > 0:  # a known format, and bytes of it
        shape = fn.peek_image_shape(encoded)  # (H, W, C) from the header, nothing decoded (int64)
        area = shape[0] * shape[1]
        cut = rows[0] * (area > size * JPEG_MAX_PIXELS_PER_BYTE)  # (rows[0]: JPEG)
        status = fn.lookup_table((area > max_pixels) * 2 + cut, keys=[0, 1, 2, 3], dtype=types.UINT8,
                                 values=[STATUS_OK, STATUS_CUT_SHORT, STATUS_OVERSIZE, STATUS_OVERSIZE])
    else:
        status = fn.lookup_table(size, keys=[0], values=[STATUS_NOT_AN_IMAGE], default_value=STATUS_NOT_AN_IMAGE,
                                 dtype=types.UINT8)  # (a per-sample constant)
    return status


def mixed_decoder_options(options: dict | None = None) -> dict:
    """The mixed (nvJPEG) decoder's arguments: libjpeg-turbo's "fancy" chroma upsampling, so that a 4:2:0
    JPEG decodes on the GPU as on the CPU and in PIL (no train/serve skew at colour edges), and the
    caller's ``hw_decoder_load``, ``device_memory_padding`` and ``host_memory_padding``."""
    return {"jpeg_fancy_upsampling": True, **(options or {})}


# Half-width of each interpolation's filter, in output pixels (in input pixels times the scale when the
# antialiased resize shrinks): how far outside the crop window the resize reads.
_FILTER_RADIUS = {types.INTERP_NN: 0.5, types.INTERP_LINEAR: 1.0, types.INTERP_TRIANGULAR: 1.0,
                  types.INTERP_CUBIC: 2.0, types.INTERP_LANCZOS3: 3.0}


def center_window(encoded, size: Sequence[int], crop_ratio: float, interp_type=types.INTERP_LINEAR):
    """The evaluation transform's input window, from the header (``fn.peek_image_shape``, EXIF
    orientation applied): ``(anchor, shape, roi_start, roi_end)``, so that decoding only
    ``anchor .. anchor + shape`` (``fn.decoders.image_slice``) and resizing its ``roi_start .. roi_end``
    to ``size`` gives the pixels of the whole-image path: resize, keeping the aspect ratio, to cover
    ``size / crop_ratio`` (``mode="not_smaller"``), then the center crop of ``crop_mirror_normalize``.

    That resize keeps the exact scale ``k = max(cover / (H, W))`` and rounds the output (DALI's
    ``subpixel_scale``), centered on the image; the crop's anchor is ``round((out - size) / 2)``. The
    window adds the filter's reach on each side (``_FILTER_RADIUS``, times ``1 / k`` when shrinking)."""
    # (each quantity a (2,) tensor, height and width: one operator per step, not one per side)
    side = fn.peek_image_shape(encoded, dtype=types.FLOAT64)[0:2]
    crop = fn.constant(fdata=[float(s) for s in size], shape=[2], dtype=types.FLOAT)  # (exact; promoted)
    scales = crop / crop_ratio / side
    k = dmath.max(scales[0], scales[1])  # (DALI's reductions take no float64)
    reach = _FILTER_RADIUS.get(interp_type, 3.0) * dmath.max(1.0 / k, 1.0) + 1
    out = dmath.floor(side * k + 0.5)  # the resized sides (not_smaller)
    first = side / 2 + (dmath.floor((out - crop) / 2 + 0.5) - out / 2) / k  # the crop's first row and column
    last = first + crop / k
    lo = dmath.max(dmath.floor(first - reach), 0.0)
    hi = dmath.min(dmath.ceil(last + reach), side)
    return (fn.cast(lo, dtype=types.INT64), fn.cast(hi - lo, dtype=types.INT64),
            fn.cast(first - lo, dtype=types.FLOAT), fn.cast(last - lo, dtype=types.FLOAT))


#: the resizes' filters by ``TransformSpec.interpolation``
INTERPOLATION = {"nearest": types.INTERP_NN, "bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC,
                 "lanczos": types.INTERP_LANCZOS3}
TORCHVISION_TRANSLATE = 150 / 331  # RandAugment's and AutoAugment's largest shift, of the image's side


def decode(encoded, spec: TransformSpec, *, device: str = "cpu", replay: bool = False,
           decoder_options: dict | None = None):
    """Decodes at native resolution and brings every image to ``spec.size`` (height, width), HWC uint8.

    Returns ``(images, status)`` (see :func:`image_status`): an image over ``spec.max_pixels`` or bytes
    that are not an image are not decoded at all; a black placeholder takes their place and ``status``
    says why, so memory stays bounded and the caller can name the sample. ``replay=True`` decodes
    nothing (see :func:`image_status`). (Needs ``enable_conditionals=True``.)

    Training: random-resized-crop. Evaluation: resize, keeping the aspect ratio, to cover
    ``size / crop_ratio`` (the shorter side to ``size / crop_ratio`` for a square), then the center
    crop. With ``spec.roi_decode`` only the crop's window is decoded (ROI decode: ``image_random_crop``;
    for evaluation :func:`center_window`, the same pixels); without it the whole image is decoded and
    cropped after (``fn.random_resized_crop``; the evaluation crop in :func:`normalize`), which lets a
    GPU's hardware JPEG decoder take part. The resize is antialiased, with ``spec.interpolation``, so a
    large downscale does not alias. Every later op runs on the decoder's device. On a GPU
    (``device="mixed"``) the decoder takes ``decoder_options`` (see :func:`mixed_decoder_options`).
    """
    size, train, interp_type = list(spec.size), spec.train, INTERPOLATION[spec.interpolation]
    status = image_status(encoded, spec.max_pixels, replay=replay)
    options = mixed_decoder_options(decoder_options) if device == "mixed" else {}
    resize = dict(interp_type=interp_type, antialias=True)
    crop = dict(random_area=list(spec.random_area), random_aspect_ratio=list(spec.random_aspect_ratio), num_attempts=10)
    if status == STATUS_OK:
        if train and spec.roi_decode:
            images = fn.decoders.image_random_crop(encoded, device=device, output_type=types.RGB, **crop, **options)
            images = fn.resize(images, size=size, **resize)
        elif train:
            images = fn.decoders.image(encoded, device=device, output_type=types.RGB, **options)
            images = fn.random_resized_crop(images, size=size, **crop, **resize)
        elif spec.roi_decode:
            anchor, shape, start, end = center_window(encoded, spec.size, spec.crop_ratio, interp_type)
            images = fn.decoders.image_slice(encoded, anchor, shape, device=device, output_type=types.RGB,
                                             axis_names="HW", normalized_anchor=False, normalized_shape=False,
                                             **options)
            images = fn.resize(images, size=size, roi_start=start, roi_end=end, roi_relative=False, **resize)
        else:
            images = fn.decoders.image(encoded, device=device, output_type=types.RGB, **options)
            cover = [s / spec.crop_ratio for s in size]  # keeps the aspect ratio; no side ends up smaller than this
            images = fn.resize(images, size=cover, mode="not_smaller", **resize)
    else:
        images = fn.reshape(fn.constant(idata=[0, 0, 0], shape=[1, 1, 3], dtype=types.UINT8), layout="HWC")
        if device == "mixed":
            images = images.gpu()
        images = fn.resize(images, size=size, **resize)
    return images, status


def augment(images, spec: TransformSpec):
    """The training graph's augmentations of ``size``-sized HWC uint8 images, as ``spec`` asks, on their
    device: ``auto_augment`` (``nvidia.dali.auto_aug``: torchvision's policies, its fill of 0 and its
    shifts: 32 pixels for TrivialAugmentWide, 150/331 of the side for RandAugment and AutoAugment), then
    ``color_jitter`` (brightness, contrast, saturation and hue factors drawn as ``ColorJitter`` draws them,
    applied in a random order per image, as ``ColorJitter`` does: :func:`_color_jitter`). Nothing when the spec
    asks for none, or for evaluation. (Needs ``enable_conditionals=True``.)"""
    if not spec.train:
        return images
    with _without_dali_alias_warnings():
        images = _auto_augment(images, spec)
    if spec.color_jitter is not None:
        images = _color_jitter(images, spec.color_jitter)
    return images


def _color_jitter(images, jitter: tuple[float, float, float, float]):
    """torchvision's ``ColorJitter``: the factors drawn as it draws them, its operations applied in a
    random order per image (as its ``randperm``), each saturating to uint8 as torchvision clamps.

    Brightness scales; contrast blends with the image's mean gray (``0.299 R + 0.587 G + 0.114 B``,
    PIL's and torchvision's weights; DALI's ``fn.contrast`` would centre on 128); saturation blends with
    each pixel's gray (DALI's YIQ saturation: the same luma, so the same blend); hue shifts the HSV hue
    (:func:`_hue`, torchvision's arithmetic; DALI's ``fn.hue`` is a YIQ rotation, other colours)."""
    brightness, contrast, saturation, hue = jitter
    factor = lambda v: fn.random.uniform(range=[max(0.0, 1 - v), 1 + v])  # noqa: E731
    ops = {}  # code -> operation, for the jitters asked for (their factors drawn up front, per image)
    if brightness:
        ops[0] = functools.partial(fn.brightness, brightness=factor(brightness))
    if contrast:
        ops[1] = functools.partial(_contrast, factor=factor(contrast))
    if saturation:
        ops[2] = functools.partial(fn.color_twist, saturation=factor(saturation))
    if hue:
        ops[3] = functools.partial(_hue, shift=fn.random.uniform(range=[-hue, hue]))
    codes = list(ops)
    if len(codes) == 1:
        return ops[codes[0]](images)
    orders = [code for order in itertools.permutations(codes) for code in order]
    table = fn.constant(idata=orders, shape=[len(orders) // len(codes), len(codes)], dtype=types.INT32)
    order = table[fn.random.uniform(values=list(range(len(orders) // len(codes))), dtype=types.INT32)]
    for k in range(len(codes)):  # (conditionals: each image through its own order)
        for code in codes:
            if order[k] == code:
                images = ops[code](images)
    return images


def _hue(images, shift):
    """torchvision's ``adjust_hue`` of HWC uint8 images by ``shift`` turns: to float in [0, 1], to HSV,
    the hue moved (modulo 1), back to RGB, and to uint8 as its ``convert_image_dtype`` does (times
    ``256 - 1e-3``, truncated). The same arithmetic as its ``_rgb2hsv`` / ``_hsv2rgb``, on either device."""
    x = fn.cast(images, dtype=types.FLOAT) * (1 / 255)
    r, g, b = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    flag = lambda condition: fn.cast(condition, dtype=types.FLOAT)  # noqa: E731  (1.0 where true)
    value = dmath.max(dmath.max(r, g), b)
    chroma = value - dmath.min(dmath.min(r, g), b)
    gray = flag(chroma == 0)  # (maxc == minc)
    saturation = chroma / (value * (1 - gray) + gray)
    divisor = chroma * (1 - gray) + gray
    rc, gc, bc = (value - r) / divisor, (value - g) / divisor, (value - b) / divisor
    on_r = flag(value == r)
    on_g = flag(value == g) * (1 - on_r)
    hue = (on_r * (bc - gc) + on_g * (2 + rc - bc) + (1 - on_r - on_g) * (4 + gc - rc)) / 6 + 1
    hue = hue - dmath.floor(hue) + shift  # (fmod(h, 1) + shift)
    sixths = (hue - dmath.floor(hue)) * 6  # (h % 1, in sixths of a turn)
    sector = dmath.floor(sixths)
    frac = sixths - sector
    sector = sector - 6 * dmath.floor(sector / 6)  # (% 6)
    p = dmath.clamp(value * (1 - saturation), 0.0, 1.0)
    q = dmath.clamp(value * (1 - saturation * frac), 0.0, 1.0)
    t = dmath.clamp(value * (1 - saturation * (1 - frac)), 0.0, 1.0)
    m = [flag(sector == k) for k in range(6)]
    red = m[0] * value + m[1] * q + m[2] * p + m[3] * p + m[4] * t + m[5] * value
    green = m[0] * t + m[1] * value + m[2] * value + m[3] * q + m[4] * p + m[5] * p
    blue = m[0] * p + m[1] * p + m[2] * t + m[3] * value + m[4] * value + m[5] * q
    rgb = fn.reshape(fn.stack(red, green, blue, axis=2), layout="HWC")  # (the slices lost the layout)
    return fn.cast(dmath.floor(rgb * (256 - 1e-3)), dtype=types.UINT8)


def _contrast(images, factor):
    mean = fn.reductions.mean(images, axis_names="HW", keep_dims=True)
    center = fn.reductions.sum(mean * types.Constant(np.array(_LUMA, dtype=np.float32)), axis_names="C",
                               keep_dims=True)
    return fn.cast_like(center + (images - center) * factor, images)  # (saturating, rounded)


_LUMA = (0.299, 0.587, 0.114)


@contextlib.contextmanager
def _without_dali_alias_warnings():
    """DALI 2.4's own auto_aug suites call ``fn.experimental.equalize`` and ``fn.experimental.filter``,
    aliases DALI itself deprecates with a warning it forces on (``simplefilter("default")`` around its
    ``warn``): those are not shown."""
    shown = warnings.showwarning

    def show(message, category, *args, **kwargs):
        if not (issubclass(category, DeprecationWarning) and "`nvidia.dali.fn.experimental." in str(message)):
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _auto_augment(images, spec: TransformSpec):
    warp = dict(fill_value=0, interp_type=INTERPOLATION[spec.augment_interpolation])
    if spec.auto_augment == "ta_wide":
        from nvidia.dali.auto_aug import trivial_augment

        images = trivial_augment.trivial_augment_wide(images, num_magnitude_bins=spec.augment_bins,
                                                      max_translate_abs=32, **warp)
    elif spec.auto_augment == "ra":
        from nvidia.dali.auto_aug import rand_augment

        images = rand_augment.rand_augment(images, n=spec.ra_num_ops, m=spec.ra_magnitude,
                                           num_magnitude_bins=spec.augment_bins, shape=list(spec.size),
                                           max_translate_rel=TORCHVISION_TRANSLATE, **warp)
    elif spec.auto_augment == "imagenet":
        from nvidia.dali.auto_aug import auto_augment

        images = auto_augment.auto_augment_image_net(images, shape=list(spec.size),
                                                     max_translate_rel=TORCHVISION_TRANSLATE, **warp)
    return images


def normalize(images, spec: TransformSpec):
    """Center crop to ``spec.size`` (a no-op after a training decode), the training graph's horizontal
    flip (``spec.hflip``), ``(x / 255 - mean) / std`` in ``spec.dtype``, HWC to ``spec.layout``; then
    the training graph's random erasing (:func:`erase`)."""
    mirror = fn.random.coin_flip(probability=spec.hflip) if spec.train and spec.hflip > 0 else 0
    images = fn.crop_mirror_normalize(
        images,
        crop=list(spec.size),
        mirror=mirror,
        mean=[255 * m for m in spec.mean],
        std=[255 * s for s in spec.std],
        dtype={"float32": types.FLOAT, "float16": types.FLOAT16}[spec.dtype],
        output_layout=spec.layout,
    )
    if spec.train and spec.random_erase > 0:
        images = erase(images, spec)
    return images


def erase(images, spec: TransformSpec):
    """Random erasing of normalized images, as torchvision's ``RandomErasing(p, scale, ratio, value)``: with
    probability ``spec.random_erase`` a rectangle of each image is set to ``spec.erase_value`` (``"random"``:
    standard normal noise, a draw per pixel and channel). Its area's share is drawn from ``erase_scale``;
    its aspect ratio log-uniformly from ``erase_ratio``, narrowed to the ratios at which that area fits the
    image (torchvision draws again, up to 10 times, where it does not fit: the same rectangles, without
    the draws that miss); its place uniformly."""
    height, width = (float(s) for s in spec.size)
    low, high = spec.erase_scale
    share = fn.random.uniform(range=[low, high]) if low < high else fn.random.uniform(values=[low])  # (no empty range)
    area = share * (height * width)
    low = dmath.max(math.log(spec.erase_ratio[0]), dmath.log(area / (width * width)))  # (w <= width)
    high = dmath.min(math.log(spec.erase_ratio[1]), dmath.log(height * height / area))  # (h <= height)
    log_ratio = dmath.min(low, high) + fn.random.uniform(range=[0.0, 1.0]) * dmath.max(high - low, 0.0)
    ratio = dmath.exp(log_ratio)
    h = dmath.clamp(dmath.floor(dmath.sqrt(area * ratio) + 0.5), 1.0, height)
    w = dmath.clamp(dmath.floor(dmath.sqrt(area / ratio) + 0.5), 1.0, width)
    top = dmath.floor(fn.random.uniform(range=[0.0, 1.0]) * (height - h + 1) * 0.999999)
    left = dmath.floor(fn.random.uniform(range=[0.0, 1.0]) * (width - w + 1) * 0.999999)
    erased = fn.cast(fn.random.coin_flip(probability=spec.random_erase), dtype=types.FLOAT)
    anchor = fn.stack(top, left)
    shape = fn.stack(h * erased, w * erased)
    window = dict(anchor=anchor, shape=shape, axis_names="HW", normalized_anchor=False, normalized_shape=False)
    if spec.erase_value != "random":
        return fn.erase(images, fill_value=spec.erase_value, **window)
    images = fn.cast(images, dtype=types.FLOAT)  # (float16 has no arithmetic on the CPU; the round trip is exact)
    kept = fn.cast(fn.erase(fn.cast(images * 0 + 1, dtype=types.UINT8), fill_value=0, **window), dtype=types.FLOAT)
    mixed = images * kept + fn.random.normal(images) * (1 - kept)  # (exact: x * 1 + n * 0 is x)
    return fn.cast(mixed, dtype={"float32": types.FLOAT, "float16": types.FLOAT16}[spec.dtype])
