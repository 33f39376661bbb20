"""DALI graph definitions for dali_resizer: readers, decode, augmentation, normalization.

Nothing here imports torch; the torch side (``dali_resizer.DALILoader``) builds these pipelines and
wraps them in DALI's PyTorch iterator. The constants both sides use (status codes, ``MAX_PIXELS``,
the normalization, the image extensions) are defined once, in ``dali_resizer.samples``, which imports
neither DALI nor torch; they are re-exported here.
"""

try:
    import nvidia.dali  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only where DALI is missing
    raise ImportError(
        "pipelines needs NVIDIA DALI. Install the wheel that matches your CUDA major version: "
        "`pip install nvidia-dali-cuda130` (CUDA 13, the default of this project) or "
        "`pip install nvidia-dali-cuda120` (CUDA 12). DALI runs CPU-only pipelines without a GPU."
    ) from e

from dali_resizer.samples import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_PIXELS,
    SHARD_IMAGE_EXTENSIONS,
    SHARD_LABEL_EXTENSION,
    STATUS_CUT_SHORT,
    STATUS_NOT_AN_IMAGE,
    STATUS_OK,
    STATUS_OVERSIZE,
)
from pipelines.image_folder import decode_only_pipeline, image_folder_pipeline
from pipelines.stages import augment, decode, decoder_device, erase, image_status, normalize
from pipelines.webdataset import webdataset_decode_only_pipeline, webdataset_pipeline

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_PIXELS",
    "SHARD_IMAGE_EXTENSIONS",
    "SHARD_LABEL_EXTENSION",
    "STATUS_CUT_SHORT",
    "STATUS_NOT_AN_IMAGE",
    "STATUS_OK",
    "STATUS_OVERSIZE",
    "augment",
    "decode",
    "decode_only_pipeline",
    "decoder_device",
    "erase",
    "image_folder_pipeline",
    "image_status",
    "normalize",
    "webdataset_decode_only_pipeline",
    "webdataset_pipeline",
]
