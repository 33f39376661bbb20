"""The embedded default data set: deterministic, labelled JPEGs with ImageNet-like sizes.

Each image is colored 1/f noise (the power spectrum of natural photographs) with random-phase
structure at every scale, plus a class-specific oriented grating, so that a classifier has a real but
modest signal to learn. Images are written once into a cache folder and reused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from dali_resizer.readers import default_cache_dir

__all__ = ["make_synthetic_folder", "synthetic_image"]

_VERSION = 1


def synthetic_image(rng: np.random.Generator, height: int, width: int, label: int, num_classes: int) -> np.ndarray:
    """One ``(height, width, 3)`` uint8 image of class ``label``."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    amplitude = radius ** -rng.uniform(1.0, 1.4)  # natural images: amplitude ~ 1/f^alpha, alpha near 1
    amplitude[0, 0] = 0.0
    # Three channels share most of their structure (luminance) and differ a little (chroma).
    shared = rng.standard_normal((height, width // 2 + 1)) + 1j * rng.standard_normal((height, width // 2 + 1))
    channels = []
    for _ in range(3):
        own = rng.standard_normal(shared.shape) + 1j * rng.standard_normal(shared.shape)
        channels.append(np.fft.irfft2(amplitude * (shared + 0.35 * own), s=(height, width)))
    image = np.stack(channels, axis=-1)
    image /= image.std() + 1e-8

    # Class signal: a grating whose orientation depends on the label, at a random phase and frequency.
    angle = np.pi * (label + rng.uniform(-0.15, 0.15)) / num_classes
    period = rng.uniform(6.0, 14.0) * max(height, width) / 500
    yy, xx = np.mgrid[0:height, 0:width]
    grating = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    image += 0.6 * grating[..., None]

    tint = rng.uniform(-0.4, 0.4, size=3)
    image = 128 + 40 * (image + tint)
    return np.clip(image, 0, 255).astype(np.uint8)


def _image_size(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    long_side = int(rng.integers(min_side, max_side + 1))
    aspect = rng.choice([4 / 3, 4 / 3, 3 / 2, 1.0, 3 / 4])  # mostly landscape, as in ImageNet
    short_side = max(1, round(long_side / max(aspect, 1 / aspect)))
    return (short_side, long_side) if aspect >= 1 else (long_side, short_side)


def make_synthetic_folder(
    root: str | os.PathLike | None = None,
    *,
    num_classes: int = 10,
    images_per_class: int = 32,
    min_side: int = 300,
    max_side: int = 700,
    quality: int = 90,
    seed: int = 0,
) -> Path:
    """Writes (once) and returns an image folder ``<root>/<class>/<image>.jpg``.

    The same arguments always give the same files, byte for byte. With ``root=None`` the folder lives
    in the cache (:func:`dali_resizer.readers.default_cache_dir`), named after the arguments, and is
    reused by later calls; a partly written folder is never used.

    Example:
        >>> from dali_resizer import DALILoader, make_synthetic_folder
        >>> loader = DALILoader(make_synthetic_folder(), batch_size=32, shuffle=True, size=448)  # doctest: +SKIP
    """
    if num_classes < 1 or images_per_class < 1:
        raise ValueError(f"num_classes and images_per_class must be positive, got {num_classes}, {images_per_class}")
    if not 1 <= min_side <= max_side:
        raise ValueError(f"need 1 <= min_side <= max_side, got {min_side}, {max_side}")
    name = f"synthetic-v{_VERSION}-c{num_classes}-n{images_per_class}-{min_side}to{max_side}-q{quality}-s{seed}"
    root = Path(root) if root is not None else default_cache_dir() / name
    if (root / ".complete").is_file():
        return root

    from PIL import Image

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for label in range(num_classes):
            class_dir = staging / f"class_{label:03d}"
            class_dir.mkdir()
            for i in range(images_per_class):
                rng = np.random.default_rng([seed, label, i])
                height, width = _image_size(rng, min_side, max_side)
                pixels = synthetic_image(rng, height, width, label, num_classes)
                Image.fromarray(pixels).save(class_dir / f"{i:05d}.jpg", quality=quality)
        (staging / ".complete").touch()
        try:
            staging.rename(root)
        except OSError:  # another process finished first, or root exists without the marker
            if not (root / ".complete").is_file():
                shutil.rmtree(root, ignore_errors=True)
                staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
