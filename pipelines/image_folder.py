"""Pipeline over an explicit list of image files (an image folder, listed on the torch side)."""

from __future__ import annotations

from collections.abc import Sequence

from nvidia.dali import fn, pipeline_def, types

from dali_resizer.spec import TransformSpec
from pipelines.stages import augment, decode, mixed_decoder_options, normalize

__all__ = ["decode_only_pipeline", "image_folder_pipeline"]


@pipeline_def(enable_conditionals=True)
def image_folder_pipeline(
    files: Sequence[str],
    sample_ids: Sequence[int],
    *,
    spec: TransformSpec,
    decoder: str = "cpu",
    shard_id: int = 0,
    num_shards: int = 1,
    replay: bool = False,
    decoder_options: dict | None = None,
):
    """Reads ``files`` in the given order and yields ``(images, sample_ids, status)``.

    The reader's "label" is the sample id given for each file (its index in the source), so the torch
    side can map it to the class and can tell every sample apart. The order, shuffling included, is
    decided by the caller: DALI reads the list as given, and pads the last batch with the last sample
    (the iterator trims the padding).

    ``spec`` (a :class:`dali_resizer.spec.TransformSpec`) is what the graph does to each image: decode
    and crop (:func:`pipelines.decode`), augment (:func:`pipelines.augment`), normalize and erase
    (:func:`pipelines.normalize`). Outputs: images ``(N, 3, h, w)`` normalized (``(N, h, w, 3)`` with
    ``spec.layout="HWC"``), on the decoder's device; sample ids ``(N, 1)`` int32 on the CPU; ``status``
    ``(N,)`` uint8 on the CPU (:func:`pipelines.image_status`): not 0 where an image over
    ``spec.max_pixels``, or a file that is not an image, was replaced by a placeholder instead of being
    decoded. ``replay``, ``decoder_options``: see :func:`pipelines.decode`.
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
    images, status = decode(encoded, spec, device=decoder, replay=replay, decoder_options=decoder_options)
    images = normalize(augment(images, spec), spec)
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
