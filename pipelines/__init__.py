"""DALI graph definitions for dali_resizer: readers, decode, augmentation, normalization.

Nothing here imports torch; the torch side (``dali_resizer.DALILoader``) builds these pipelines and
wraps them in DALI's PyTorch iterator.
"""

try:
    import nvidia.dali  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only where DALI is missing
    raise ImportError(
        "pipelines needs NVIDIA DALI. Install the wheel that matches your CUDA major version: "
        "`pip install nvidia-dali-cuda130` (CUDA 13, the default of this project) or "
        "`pip install nvidia-dali-cuda120` (CUDA 12). DALI runs CPU-only pipelines without a GPU."
    ) from e

from pipelines.image_folder import decode_only_pipeline, image_folder_pipeline
from pipelines.stages import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_PIXELS,
    STATUS_NOT_AN_IMAGE,
    STATUS_OK,
    STATUS_OVERSIZE,
    decode,
    decoder_device,
    image_status,
    normalize,
)
from pipelines.webdataset import (
    IMAGE_EXTENSIONS,
    LABEL_EXTENSION,
    webdataset_decode_only_pipeline,
    webdataset_pipeline,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "LABEL_EXTENSION",
    "MAX_PIXELS",
    "STATUS_NOT_AN_IMAGE",
    "STATUS_OK",
    "STATUS_OVERSIZE",
    "decode",
    "decode_only_pipeline",
    "decoder_device",
    "image_folder_pipeline",
    "image_status",
    "normalize",
    "webdataset_decode_only_pipeline",
    "webdataset_pipeline",
]
