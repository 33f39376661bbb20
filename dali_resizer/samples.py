"""What a sample is, and what becomes of a bad one: the definitions DALI's side and torch's side share.

This module imports neither DALI nor torch, so ``pipelines/`` (DALI graphs) and the loader (torch)
both take their constants from here: the image extensions, the normalization, ``MAX_PIXELS``, the
per-sample status codes the pipelines output, ``PAD_LABEL``, :class:`BadSampleError`, and the
raise-or-skip ledger of bad samples (:class:`BadSamples`).
"""

from __future__ import annotations

import warnings

__all__ = [
    "FOLDER_IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_PIXELS",
    "PAD_LABEL",
    "SHARD_IMAGE_EXTENSIONS",
    "SHARD_LABEL_EXTENSION",
    "STATUS_NOT_AN_IMAGE",
    "STATUS_OK",
    "STATUS_OVERSIZE",
    "BadSampleError",
    "BadSamples",
    "describe_bytes",
    "oversize_problem",
    "real_mask",
]

# torchvision.datasets.folder.IMG_EXTENSIONS: the files an image folder lists; DALI decodes all of them.
FOLDER_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# A WebDataset sample's image and label components (tar members ``<key>.<ext>``).
SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SHARD_LABEL_EXTENSION = "cls"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PIL's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): ~537 MB decoded as RGB.
MAX_PIXELS = 178_956_970

# Per-sample status output by the pipelines: decoded, or replaced by a placeholder and why.
STATUS_OK, STATUS_OVERSIZE, STATUS_NOT_AN_IMAGE = 0, 1, 2

# The label of a padding row (a skipped sample's place, or the copy that evens out the shards):
# CrossEntropyLoss's default ignore_index.
PAD_LABEL = -100


def real_mask(labels):
    """The rows of a batch that are real samples, not padding: ``labels != PAD_LABEL`` (a bool tensor).

    Count with it wherever a sum over the batch is a measurement::

        mask = real_mask(labels)
        correct += (logits.argmax(1) == labels)[mask].sum()
        seen += mask.sum()
    """
    return labels != PAD_LABEL


class BadSampleError(ValueError):
    """A sample that cannot be read, decoded or labelled; the message names the file (or the shard and
    the sample's key) and why."""


def oversize_problem(max_pixels: int) -> str:
    """Why an image over ``max_pixels`` (read from its header) was not decoded."""
    return f"image over max_pixels={max_pixels:,} (not decoded; pass a larger max_pixels to read it)"


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def describe_bytes(data: bytes) -> str:
    """A short, human description of what a file's first bytes say it is."""
    if not data:
        return "empty file (0 bytes)"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP image"
    if data.startswith(b"GIF8"):
        return "GIF image (DALI does not decode GIF)"
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            if kind == "JPEG" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                return "truncated JPEG (no end-of-image marker)"
            return f"{kind} image"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return "HTML/XML text, not an image"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:512]):
        return "text, not an image"
    return "unrecognised bytes, not an image"


class BadSamples:
    """The ledger of bad samples, by name (a file, or a shard and a sample's key) -> problem.

    ``on_error="raise"``: :meth:`found` raises a :class:`BadSampleError` naming the first. ``"skip"``:
    it records them in :attr:`skipped` and warns once per new name; the caller puts padding in their
    place.
    """

    def __init__(self, on_error: str = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: dict[str, str] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.skipped

    def __len__(self) -> int:
        return len(self.skipped)

    def found(self, bad: dict[str, str], *, stacklevel: int = 2, cause: BaseException | None = None) -> None:
        """Raises for the first of ``bad`` (``on_error="raise"``), else records all and warns."""
        if not bad:
            return
        if self.on_error == "raise":
            name, problem = next(iter(bad.items()))
            raise BadSampleError(f"{name}: {problem}") from cause
        new = {name: problem for name, problem in bad.items() if name not in self.skipped}
        self.skipped.update(bad)
        if new:
            shown = "; ".join(f"{name} ({problem})" for name, problem in list(new.items())[:3])
            warnings.warn(f"skipped {len(new)} bad sample(s), {len(self.skipped)} so far: {shown}",
                          stacklevel=stacklevel + 1)
