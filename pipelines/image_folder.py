"""Pipeline over an explicit list of image files (an image folder, listed on the torch side)."""

from __future__ import annotations

from collections.abc import Sequence

from nvidia.dali import fn, pipeline_def, types

from dali_resizer.samples import IMAGENET_MEAN, IMAGENET_STD, MAX_PIXELS
from pipelines.stages import decode, mixed_decoder_options, normalize

__all__ = ["decode_only_pipeline", "image_folder_pipeline"]


@pipeline_def(enable_conditionals=True)
def image_folder_pipeline(
    files: Sequence[str],
    sample_ids: Sequence[int],
    *,
    size: tuple[int, int],
    train: bool,
    decoder: str = "cpu",
    shard_id: int = 0,
    num_shards: int = 1,
    dtype: types.DALIDataType = types.FLOAT,
    layout: str = "CHW",
    crop_ratio: float = 0.875,
    random_area: Sequence[float] = (0.08, 1.0),
    random_aspect_ratio: Sequence[float] = (3 / 4, 4 / 3),
    max_pixels: int = MAX_PIXELS,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    replay: bool = False,
    decoder_options: dict | None = None,
    roi_decode: bool = True,
):
    """Reads ``files`` in the given order and yields ``(images, sample_ids, status)``.

    The reader's "label" is the sample id given for each file (its index in the source), so the torch
    side can map it to the class and can tell every sample apart. The order, shuffling included, is
    decided by the caller: DALI reads the list as given, and pads the last batch with the last sample
    (the iterator trims the padding).

    Outputs: images ``(N, 3, h, w)`` normalized (``(N, h, w, 3)`` with ``layout="HWC"``), on the
    decoder's device; sample ids ``(N, 1)`` int32
    on the CPU; ``status`` ``(N,)`` uint8 on the CPU (:func:`pipelines.image_status`): not 0 where an
    image over ``max_pixels``, or a file that is not an image, was replaced by a placeholder instead of
    being decoded. ``replay``, ``decoder_options``, ``roi_decode`` (its ``roi``): see :func:`pipelines.decode`.
    """
    encoded, ids = fn.readers.file(
        files=list(files),
        labels=list(sample_ids),
        shard_id=shard_id,
        num_shards=num_shards,
        random_shuffle=False,
        pad_last_batch=True,
        dont_use_mmap=True,  # (a zero-byte file cannot be mapped: read, it is an empty sample with a status)
        name="Reader",
    )
    images, status = decode(encoded, size=size, train=train, device=decoder, crop_ratio=crop_ratio,
                            random_area=random_area, random_aspect_ratio=random_aspect_ratio, max_pixels=max_pixels,
                            replay=replay, decoder_options=decoder_options, roi=roi_decode)
    images = normalize(images, size=size, train=train, dtype=dtype, layout=layout, mean=mean, std=std)
    return images, ids, status


@pipeline_def
def decode_only_pipeline(files: Sequence[str], *, decoder: str = "cpu",
                         decoder_options: dict | None = None):
    """Reads and decodes ``files`` at native resolution, nothing else: the floor a loader cannot beat.

    Outputs the decoded HWC uint8 images (ragged, on the decoder's device); run it with ``pipe.run()``.
    """
    encoded, _ = fn.readers.file(files=list(files), pad_last_batch=True, name="Reader")
    options = mixed_decoder_options(decoder_options) if decoder == "mixed" else {}
    return fn.decoders.image(encoded, device=decoder, output_type=types.RGB, **options)
