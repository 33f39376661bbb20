"""Pipeline over WebDataset tar shards with DALI index files."""

from __future__ import annotations

from collections.abc import Sequence

from nvidia.dali import fn, pipeline_def, types

from dali_resizer.samples import SHARD_IMAGE_EXTENSIONS, SHARD_LABEL_EXTENSION
from dali_resizer.spec import TransformSpec
from pipelines.stages import augment, decode, mixed_decoder_options, normalize

__all__ = ["webdataset_decode_only_pipeline", "webdataset_pipeline"]


@pipeline_def(enable_conditionals=True)
def webdataset_pipeline(
    paths: Sequence[str],
    index_paths: Sequence[str],
    *,
    spec: TransformSpec,
    decoder: str = "cpu",
    shard_id: int = 0,
    num_shards: int = 1,
    random_shuffle: bool = False,
    initial_fill: int = 1024,
    replay: bool = False,
    decoder_options: dict | None = None,
):
    """Reads samples ``<key>.{jpg,jpeg,png,webp}`` + ``<key>.cls`` from tar shards.

    Every tar needs its index file (``index_paths``, same order): DALI's own tar inference is never
    used. A sample without an image or a label gets an empty one (a placeholder image, an empty label
    and an empty name), for the caller to report: the pipeline itself does not stop on it.

    ``spec``: what the graph does to each image, as in :func:`pipelines.image_folder_pipeline`. Outputs:
    images ``(N, 3, h, w)`` normalized (``(N, h, w, 3)`` with ``spec.layout="HWC"``), on the decoder's
    device; the ``cls`` bytes (ASCII digits) zero-padded to the longest in the batch, ``(N, L)`` uint8 on
    the CPU; ``status`` as in :func:`pipelines.image_folder_pipeline`; the source of the image and of the
    label as DALI names them (``"<tar>:<offset>:<member>"``, zero-padded uint8 rows), which say which
    sample each row is. ``replay``, ``decoder_options``: see :func:`pipelines.decode`.
    """
    encoded, label_text = fn.readers.webdataset(
        paths=list(paths),
        index_paths=list(index_paths),
        ext=[";".join(SHARD_IMAGE_EXTENSIONS), SHARD_LABEL_EXTENSION],
        case_sensitive_extensions=False,
        missing_component_behavior="empty",
        shard_id=shard_id,
        num_shards=num_shards,
        random_shuffle=random_shuffle,
        initial_fill=initial_fill,
        pad_last_batch=True,
        name="Reader",
    )
    images, status = decode(encoded, spec, device=decoder, replay=replay, decoder_options=decoder_options)
    images = normalize(augment(images, spec), spec)
    image_name = fn.pad(fn.get_property(encoded, key="source_info"), axes=(0,), fill_value=0)
    label_name = fn.pad(fn.get_property(label_text, key="source_info"), axes=(0,), fill_value=0)
    return images, fn.pad(label_text, axes=(0,), fill_value=0), status, image_name, label_name


@pipeline_def
def webdataset_decode_only_pipeline(paths: Sequence[str], index_paths: Sequence[str], *, decoder: str = "cpu",
                                    decoder_options: dict | None = None):
    """Reads and decodes the images of the shards at native resolution, nothing else (the floor)."""
    encoded = fn.readers.webdataset(
        paths=list(paths),
        index_paths=list(index_paths),
        ext=[";".join(SHARD_IMAGE_EXTENSIONS)],
        case_sensitive_extensions=False,
        missing_component_behavior="error",
        pad_last_batch=True,
        name="Reader",
    )
    options = mixed_decoder_options(decoder_options) if decoder == "mixed" else {}
    return fn.decoders.image(encoded, device=decoder, output_type=types.RGB, **options)
