"""What a sample is, and what becomes of a bad one: the definitions DALI's side and torch's side share.

This module imports neither DALI nor torch, so ``pipelines/`` (DALI graphs) and the loader (torch)
both take their constants from here: the image extensions, the normalization, ``MAX_PIXELS``, the
per-sample status codes the pipelines output, ``PAD_LABEL``, :class:`BadSampleError`, and the
raise-or-skip ledger of bad samples (:class:`BadSamples`).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import dataclass

__all__ = [
    "FOLDER_IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_PIXELS",
    "PAD_LABEL",
    "SHARD_IMAGE_EXTENSIONS",
    "SHARD_LABEL_EXTENSION",
    "JPEG_MAX_PIXELS_PER_BYTE",
    "STATUS_CUT_SHORT",
    "STATUS_NOT_AN_IMAGE",
    "STATUS_OK",
    "STATUS_OVERSIZE",
    "BadSampleError",
    "BadSamples",
    "DEVICE_FAILURE",
    "INDEX_FAILURE",
    "STORAGE_FAILURE",
    "DaliFailure",
    "classify_failure",
    "warn_user",
    "IMAGE_SIGNATURES",
    "describe_bytes",
    "image_format",
    "image_size",
    "jpeg_cut_short",
    "oversize_problem",
    "problem_of",
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
STATUS_OK, STATUS_OVERSIZE, STATUS_NOT_AN_IMAGE, STATUS_CUT_SHORT = 0, 1, 2, 3

# A JPEG codes at least ~1 bit per 8x8 block: libjpeg's flattest (a uniform grey, progressive) is ~251
# pixels a byte. One whose header declares many more pixels per byte of the file is cut short or
# damaged (libjpeg-turbo decodes it to grey, with only a warning on stderr).
JPEG_MAX_PIXELS_PER_BYTE = 4096

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


def jpeg_cut_short(data: bytes, size: int) -> str | None:
    """Why a JPEG of ``size`` bytes starting with ``data`` (its header) is cut short, or None: more
    pixels than ``JPEG_MAX_PIXELS_PER_BYTE`` a byte of the file."""
    dims = image_size(data) if data.startswith(b"\xff\xd8\xff") else None
    if dims is None or dims[0] * dims[1] <= size * JPEG_MAX_PIXELS_PER_BYTE:
        return None
    return (f"JPEG whose header declares {dims[0]}x{dims[1]} but whose file holds only {size:,} bytes: cut short "
            f"or damaged (not decoded)")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's first bytes (PIL reads the header, no pixels), or None."""
    import io

    from PIL import Image

    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # read sizes, however large
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # not an image PIL knows, or a header cut short
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit


def oversize_problem(max_pixels: int) -> str:
    """Why an image over ``max_pixels`` (read from its header) was not decoded."""
    return f"image over max_pixels={max_pixels:,} (not decoded; pass a larger max_pixels to read it)"


def problem_of(data: bytes, size: int | None = None, *, status: int | None = None,
               max_pixels: int = MAX_PIXELS) -> str | None:
    """The one diagnosis of a sample's bytes: why the loader does not decode it, or None.

    ``data``: the file's bytes, or at least its first 64 KiB; ``size``: its size (default ``len(data)``);
    ``status``: the pipeline's verdict on it (``pipelines.image_status``, which reads the same header),
    when there is one. Without a status the header is read here as the pipeline reads it: bytes of no
    format DALI decodes, more pixels than ``max_pixels``, a JPEG too short for its declared size. The
    readers, ``check`` and ``shards verify`` all name a bad sample with it."""
    size = len(data) if size is None else size
    if status == STATUS_OVERSIZE:
        return oversize_problem(max_pixels)
    if status == STATUS_CUT_SHORT:
        return jpeg_cut_short(data, size) or (
            "JPEG data too short for its declared size: cut short or damaged (not decoded)")
    if status == STATUS_NOT_AN_IMAGE or (status is None and (size == 0 or image_format(data) is None)):
        return f"{describe_bytes(data)} (not decoded)"
    if status is None:
        dims = image_size(data)
        if dims is not None and dims[0] * dims[1] > max_pixels:
            return oversize_problem(max_pixels)
        return jpeg_cut_short(data, size)
    return None


# DALI's words when the GPU fails (its memory runs out, a CUDA call fails), not a sample: such an error
# is never reported as bad data (its text contains "pipeline" too).
DEVICE_FAILURE = re.compile(r"out of memory|cudaErrorMemoryAllocation|CUDA_ERROR_OUT_OF_MEMORY|CUDA error|"
                            r"cudaError|NVJPEG_STATUS_ALLOCATOR_FAILURE|Can't allocate|bad_alloc", re.IGNORECASE)
# DALI's words when the object store (or a network file system) fails, not a sample.
STORAGE_FAILURE = re.compile(r"curlCode|Could not connect to server|Timeout was reached|S3 Object not found|"
                             r"NoSuchKey|Failed to flush response stream")
# DALI's words when a WebDataset index file is not one (not a sample's fault: the whole index is refused).
INDEX_FAILURE = re.compile(r"Malformed index file|Unsupported version of the index file")
_NAMES_SAMPLE = re.compile(r"Failed to decode sample #\d+ : (.+)$", re.MULTILINE)
# The lines of DALI's error that frame its reason: the pipeline's words, the operator, the traceback of its
# definition, the C++ source.
_FRAME = re.compile(r"pipeline|^Error (in|when executing) \w+ operator|^File \"|encountered:?$|^C\+\+ context:",
                    re.IGNORECASE)


@dataclass(frozen=True)
class DaliFailure:
    """What a DALI pipeline's error means: ``kind`` is ``"device"`` (the GPU failed: its memory, a CUDA
    call), ``"storage"`` (the object store or file system failed), ``"index"`` (a WebDataset index file
    is malformed), ``"sample"`` (the pipeline stopped,
    on a sample it may name) or ``"other"`` (not a pipeline's error: raise it as it is); ``reason``:
    DALI's own words, one line; ``sample``: the sample DALI named (its source info), or None."""

    kind: str
    reason: str
    sample: str | None = None


def classify_failure(error: BaseException | str) -> DaliFailure:
    """The one reading of DALI's error texts (the loader's iterator, the readers and the probes use it)."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for kind, pattern in (("device", DEVICE_FAILURE), ("storage", STORAGE_FAILURE), ("index", INDEX_FAILURE)):
        said = next((line for line in lines if pattern.search(line)), None)
        if said is not None:
            return DaliFailure(kind, said)
    if "pipeline" not in text.lower():
        return DaliFailure("other", lines[-1] if lines else type(error).__name__)
    named = _NAMES_SAMPLE.search(text)
    sample = named.group(1).strip() if named else None
    reason = next((line for line in reversed(lines) if not _FRAME.search(line)), "no reason given")
    if sample is not None:  # (the sample's name is said once, in front of the reason)
        reason = reason.replace(f" : {sample}", "")
    return DaliFailure("sample", re.sub(r"\s*:\s*$", "", reason), sample)


_PACKAGES = tuple(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep + name + os.sep
                  for name in ("dali_resizer", "pipelines"))


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Warns at the user's line: the first frame outside this project's packages (the loop over the
    loader, or the line that built it), however deep the project's own calls are."""
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGES):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


# The first bytes of each format DALI decodes: (format, parts), every part an (offset, bytes) that must
# match; a format that starts in several ways has a row for each. JPEG is the first row. The loader's
# pipelines compare a sample's first bytes with this table before decoding it (pipelines.stages).
IMAGE_SIGNATURES = (
    ("JPEG", ((0, b"\xff\xd8\xff"),)),
    ("PNG", ((0, b"\x89PNG\r\n\x1a\n"),)),
    ("BMP", ((0, b"BM"),)),
    ("TIFF", ((0, b"II*\x00"),)),
    ("TIFF", ((0, b"MM\x00*"),)),
    ("WebP", ((0, b"RIFF"), (8, b"WEBP"))),
    ("JPEG 2000", ((0, b"\x00\x00\x00\x0cjP"),)),  # the file format
    ("JPEG 2000", ((0, b"\xffO\xffQ"),)),  # a bare codestream
    *(("PNM", ((0, b"P" + bytes([c])),)) for c in b"123456"),
)


def image_format(data: bytes) -> str | None:
    """The format (a name of :data:`IMAGE_SIGNATURES`) that ``data``'s first bytes say, or None."""
    return next((kind for kind, parts in IMAGE_SIGNATURES
                 if all(data[offset : offset + len(magic)] == magic for offset, magic in parts)), None)


def describe_bytes(data: bytes) -> str:
    """A short, human description of what a file's first bytes say it is."""
    if not data:
        return "empty file (0 bytes)"
    if data.startswith(b"GIF8"):
        return "GIF image (DALI does not decode GIF)"
    kind = image_format(data)
    if kind == "JPEG":
        precision = _jpeg_precision(data)
        if precision not in (None, 8):
            return f"{precision}-bit JPEG (DALI decodes 8-bit JPEG only)"
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            return "truncated JPEG (no end-of-image marker)"
    if kind == "TIFF" and _tiff_lacks_bits_per_sample(data):
        return "TIFF without a BitsPerSample field (a 1-bit image as PIL writes it; DALI needs the field)"
    if kind is not None:
        return f"{kind} image"
    if data[4:8] == b"ftyp":  # ISO base media: the brand says which
        brand = data[8:12]
        for name, brands in (("AVIF", (b"avif", b"avis")), ("HEIC/HEIF", (b"heic", b"heix", b"mif1", b"msf1",
                                                                          b"hevc", b"heim", b"heis"))):
            if brand in brands:
                return f"{name} image (DALI does not decode {name})"
    if data.startswith(b"\xff\x0a") or data[4:12] == b"JXL \r\n\x87\n":
        return "JPEG XL image (DALI does not decode JPEG XL)"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return "HTML/XML text, not an image"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:512]):
        return "text, not an image"
    return "unrecognised bytes, not an image"


def _jpeg_precision(data: bytes) -> int | None:
    """The sample precision in bits of a JPEG's frame header (SOF0-15 but DHT, JPG, DAC), or None."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return data[i + 4] if i + 4 < len(data) else None
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        i += 2 + length
    return None


def _tiff_lacks_bits_per_sample(data: bytes) -> bool:
    """Whether a TIFF's first image directory has no BitsPerSample (tag 258) entry."""
    order = "little" if data[:2] == b"II" else "big"
    if len(data) < 8:
        return False
    offset = int.from_bytes(data[4:8], order)
    if offset + 2 > len(data):
        return False
    count = int.from_bytes(data[offset : offset + 2], order)
    tags = [int.from_bytes(data[offset + 2 + 12 * k : offset + 4 + 12 * k], order) for k in range(count)
            if offset + 4 + 12 * k <= len(data)]
    return len(tags) == count and 258 not in tags


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

    def found(self, bad: dict[str, str], *, cause: BaseException | None = None) -> None:
        """Raises for the first of ``bad`` (``on_error="raise"``), else records all and warns at the
        user's line."""
        if not bad:
            return
        if self.on_error == "raise":
            name, problem = next(iter(bad.items()))
            raise BadSampleError(f"{name}: {problem}") from cause
        new = {name: problem for name, problem in bad.items() if name not in self.skipped}
        self.skipped.update(bad)
        if new:
            shown = "; ".join(f"{name} ({problem})" for name, problem in list(new.items())[:3])
            warn_user(f"skipped {len(new)} bad sample(s), {len(self.skipped)} so far: {shown}")
