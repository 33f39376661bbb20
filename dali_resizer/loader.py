"""``DALILoader``: a drop-in for ``torch.utils.data.DataLoader`` that reads, decodes and augments with DALI."""

from __future__ import annotations

import dataclasses
import inspect
import os
import warnings

import numpy as np
import torch
from torch.utils.data import default_collate

from dali_resizer.dataset import LoaderDataset
from dali_resizer.iterator import DALILoaderIter, release_unused
from dali_resizer.readers import ReadPlan, is_image_dataset, open_source
from dali_resizer.sampler import Carried, EpochBatchSampler, EpochSampler, union_of_runs
from dali_resizer.samples import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_PIXELS,
    PAD_LABEL,
    BadSampleError,
    BadSamples,
)
from dali_resizer.spec import TransformSpec
from dali_resizer.utils import to_size

__all__ = ["MAX_PIXELS", "PAD_LABEL", "BadSampleError", "DALILoader", "default_threads", "distributed_rank_and_world",
           "local_gpu", "resolve_device"]

# DataLoader arguments with no meaning here: what to use instead. Passing their default is accepted.
_REFUSED = {
    "batch_sampler": "use batch_size= and drop_last= (and sampler= for the order)",
    "worker_init_fn": "there are no worker processes: DALI runs num_threads threads in this process",
    "multiprocessing_context": "there are no worker processes: DALI runs num_threads threads in this process",
    "generator": "pass seed= (an int): with set_epoch() it decides the order and the augmentations",
    "timeout": "DALI's reads take no timeout; a read that fails raises",
    "pin_memory_device": "pass device= (where the batches are delivered)",
    "in_order": "DALI delivers the batches in order",
}
_DEFAULTS = {"batch_sampler": None, "worker_init_fn": None, "multiprocessing_context": None, "generator": None,
             "timeout": 0, "pin_memory_device": "", "in_order": True}


def _refuse_keys_dali_misreads(source, cache) -> None:
    """DALI reads an ``s3://`` URL's ``?`` and ``#`` as its query and fragment, so a key holding one reads
    another object (``img?v=2.jpg`` reads ``img``), silently; percent-encoding is not decoded. The
    objects DALI reads itself (an image folder's files; shards read in place) must not hold one. (Through
    the shard cache, boto3 downloads them: any key is read right.)"""
    from dali_resizer.readers import ShardSource

    if isinstance(source, ShardSource):
        urls = [] if cache is not None else [*source.paths, *source.index_paths]
    else:
        urls = list(source.files)
    odd = [url for url in urls if "://" in url and ("?" in url or "#" in url)]
    if odd:
        more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
        hint = ("read the shards through the cache (cache=True), which downloads any key"
                if isinstance(source, ShardSource) else "rename them (or write shards, which the cache reads)")
        raise ValueError(f"{odd[0]}{more}: a key holding '?' or '#', which DALI reads as the URL's query or fragment "
                         f"(it would read another object); {hint}")


def _shard_cache(source, cache: bool | str | os.PathLike, limit: int | str | None):
    """The node-local cache for shards in object storage (``cache``: True, or its folder), else None."""
    from dali_resizer.readers import ShardSource, default_cache_dir

    if cache is False or cache is None or not isinstance(source, ShardSource) or "://" not in source.paths[0]:
        return None
    from dali_resizer.cache import ShardCache, default_cache_limit, parse_bytes

    if isinstance(cache, ShardCache):  # (a loader rebuilt from another's attributes, as accelerate does)
        return cache

    folder = default_cache_dir() / "shards" if cache is True else cache
    largest = max(source.manifest_bytes) if source.manifest_bytes else 0
    return ShardCache(folder, parse_bytes(limit) if limit is not None else default_cache_limit(folder, largest))


def distributed_rank_and_world() -> tuple[int, int]:
    """(global rank, world size) from an initialised ``torch.distributed``, else from torchrun's
    ``RANK`` / ``WORLD_SIZE``, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_gpu(local_rank: int | None, local_world_size: int | None, count: int, current: int) -> int:
    """The CUDA device of this process: ``LOCAL_RANK``'s under torchrun, when that many GPUs are visible;
    with fewer (one ``CUDA_VISIBLE_DEVICES`` GPU per task, or ranks sharing a host's GPUs) the ranks
    take them in turn; outside torchrun, the current device."""
    if count < 1:
        raise ValueError("no CUDA device is visible")
    if local_rank is None:
        return current
    if local_rank >= count and count > 1 and (local_world_size or local_rank + 1) > count:
        warnings.warn(f"LOCAL_RANK {local_rank} of {local_world_size} on a host with {count} visible GPUs: "
                      f"ranks share GPUs (this one takes cuda:{local_rank % count})", stacklevel=3)
    return local_rank % count


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value is not None and value.strip().isdigit() else None


def resolve_device(device: torch.device | str | int | None) -> torch.device:
    """``None`` (or ``"cuda"``) picks this process's CUDA device when there is one (``LOCAL_RANK``'s
    under torchrun, checked against the GPUs visible: see :func:`local_gpu`; else the current
    device), and ``None`` the CPU without one; a request for a GPU that is not there is an error, not
    a silent fallback."""
    if device is None and not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        resolved = torch.device("cuda") if device is None else torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available here; use device='cpu'")
    count = torch.cuda.device_count()
    if resolved.index is None:
        return torch.device("cuda", local_gpu(_env_int("LOCAL_RANK"), _env_int("LOCAL_WORLD_SIZE"), count,
                                              torch.cuda.current_device()))
    if resolved.index >= count:
        raise ValueError(f"device={device!r}: there are only {count} CUDA device(s) visible"
                         + (f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})"
                            if "CUDA_VISIBLE_DEVICES" in os.environ else ""))
    return resolved


def default_threads(device: torch.device) -> int:
    """DALI threads when none are asked for: the cores this process may use, shared among the ranks of
    this host (``LOCAL_WORLD_SIZE`` under torchrun); on a GPU at most 16, as decoding runs there (each
    mixed-decoder thread also holds its own nvJPEG buffers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_world = _env_int("LOCAL_WORLD_SIZE") or 1
    if hasattr(os, "sched_getaffinity") and local_world > 1 and cores == (os.cpu_count() or cores):
        cores //= local_world  # (ranks not pinned to their own cores share the host's)
    return max(1, min(cores, 16) if device.type == "cuda" else cores)


class DALILoader:
    """Image batches decoded and augmented by NVIDIA DALI, yielded as ``(images, labels)`` torch tensors.

    A drop-in for ``torch.utils.data.DataLoader`` over an image folder or WebDataset shards: the same
    arguments in the same places, the same defaults and attributes (README, "From DataLoader"). Images
    are decoded at native resolution (nvJPEG on a GPU, libjpeg-turbo on the CPU), cropped, flipped and
    resized with an antialiased filter to the working ``size`` (the learnable resizer's input, e.g.
    448), normalized with ``mean`` and ``std``, and handed over on ``device`` without a host round trip.

    Args:
        source: An image folder (``root/<class>/<image>``, labels as torchvision's ``ImageFolder``), a
            folder of WebDataset ``.tar`` shards, one ``.tar``, a list of them, a brace pattern
            (``"train-{000000..000127}.tar"``), or a file list written by ``python -m
            dali_resizer.check --write-list``. Shards are read with a DALI index file:
            ``<shard>.idx`` beside each tar, or one built once into ``index_dir``. Or a torchvision
            ``ImageFolder`` / ``DatasetFolder`` of images: its files, labels and classes, and its transform
            read as ``size``, ``train``, the crop, ``mean``, ``std`` and ``dtype`` (``dali_resizer.transforms``).
        batch_size: Samples per batch (DataLoader's default, 1).
        shuffle: A new order every epoch, from ``(seed, epoch)`` (DataLoader's default: False).
        sampler: ``None``, or torch's ``SequentialSampler``, ``RandomSampler`` or ``DistributedSampler``
            over a dataset of the same length: its shuffle, seed, drop_last, rank and world size are
            taken, and its ``set_epoch`` is followed. Any other sampler is refused.
        num_workers: Torch's name for ``num_threads`` (DALI has threads, not worker processes: ``N > 0``
            gives ``N`` threads, ``0`` one).
        collate_fn: ``None`` or ``default_collate``: DALI assembles the batches as ``default_collate``
            would; anything else is refused (transform the batch after the loader, on the device).
        pin_memory: Deliver CPU batches in page-locked memory (batches on a GPU are there already).
        drop_last: Drop the last batch when it is smaller than ``batch_size``; every rank reads the
            smallest part of the epoch, without padding.
        size: Working size of the delivered images, an int or ``(height, width)``.
        train: Random-resized-crop and random flip when True; resize and center crop when False.
            Defaults to ``shuffle`` (after ``sampler``), so that a loader built with DataLoader's
            defaults, as for validation, never gets the training transform.
        num_threads: DALI CPU worker threads; defaults to the cores this process may use, shared among
            the ranks of the host under torchrun (``LOCAL_WORLD_SIZE``), and at most 16 on a GPU.
        device: ``None`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Under
            torchrun ``None`` and ``"cuda"`` take ``LOCAL_RANK``'s GPU (in turn, where fewer are visible).
        seed: Seed of the shuffling order and the augmentations; with ``set_epoch`` it makes runs repeatable.
        shard_id: This process's part of the data; default: its global rank (``torch.distributed`` when
            initialised, else torchrun's ``RANK``), 0 outside a distributed job.
        num_shards: Number of parts; default: the world size (``WORLD_SIZE``), 1 outside one.
        dtype: ``torch.float32``, ``torch.float16`` or ``torch.bfloat16`` images (DALI has no bfloat16:
            those are normalized in float32 and converted on ``device``, one more pass over the batch).
        memory_format: ``torch.contiguous_format`` (NCHW) or ``torch.channels_last``: DALI then writes
            NHWC, delivered as an ``(N, 3, H, W)`` view with channels-last strides, the layout the
            resizer's and most backbones' convolutions run fastest in, without a copy.
        mean: Per-channel mean subtracted from images scaled to [0, 1] (ImageNet's by default).
        std: Per-channel standard deviation they are divided by (ImageNet's by default).
        crop_ratio: Evaluation center-crop ratio (the crop is ``size``, taken from ``size / crop_ratio``).
        random_area: Training crop area range, as a fraction of the image (torchvision's ``scale``).
        random_aspect_ratio: Training crop aspect-ratio range, width / height (torchvision's ``ratio``).
        interpolation: The resizes' filter (antialiased): ``"bilinear"`` (default), ``"bicubic"``,
            ``"nearest"`` or ``"lanczos"`` (torchvision's ``--interpolation``).
        hflip: Training: the probability of a horizontal flip (0.5; 0 for none).
        auto_augment: Training: ``"ta_wide"`` (TrivialAugmentWide), ``"ra"`` (RandAugment: ``ra_num_ops``
            operations of magnitude ``ra_magnitude`` out of ``augment_bins``, 31 as torchvision's) or
            ``"imagenet"`` (AutoAugment's ImageNet policy), in the DALI graph (``nvidia.dali.auto_aug``);
            default None. Their rotations, shears and shifts interpolate with ``augment_interpolation``,
            ``"nearest"`` or ``"bilinear"`` (None: ``interpolation`` where it is one of those, else bilinear).
        color_jitter: Training: ``(brightness, contrast, saturation, hue)``, as torchvision's ``ColorJitter``.
        random_erase: Training: the probability of erasing a rectangle of each normalized image
            (torchvision's ``RandomErasing``), of ``erase_scale`` of its area, aspect ratio in
            ``erase_ratio``, filled with ``erase_value`` (normalized units, or ``"random"``: normal noise).
            Every augmentation is off unless asked for; its draws are ``(seed, epoch)``'s and resume
            exactly. MixUp and CutMix mix batches after the loader: ``dali_resizer.MixUpCutMix``.
        prefetch_queue_depth: Batches DALI prepares ahead (default 2); ``prefetch_factor`` is torch's name.
        return_index: Also yield each sample's index in the source (``(images, labels, indices)``).
        index_dir: Where missing WebDataset index files are built (default: the user cache).
        cache: Shards in object storage (``s3://``) are read from whole local copies in a cache shared
            by the node's processes (``$DALI_RESIZER_CACHE/shards``, or the folder given here), downloaded a
            span or two of the epoch ahead (see ``dali_resizer.cache``); ``False`` reads them in place (about
            four requests a sample).
        cache_limit: Bytes of copies the cache keeps (an int, or ``"100GB"``); default
            ``$DALI_RESIZER_CACHE_LIMIT``, else 80% of the free disk.
        on_error: ``"raise"``: a sample that cannot be read, decoded or labelled stops the iteration
            with a :class:`BadSampleError` naming the file (or the shard and the sample's key) and the
            problem. ``"skip"``: it is recorded in ``loader.skipped`` (name -> problem), a warning names
            it, and its place in the batch is taken by a padding sample (label ``PAD_LABEL``), so every
            good sample still comes exactly once, labels never shift and every rank keeps the same
            number of batches. Shards: a sample without an image or a label, a label that is not an
            integer or is out of range, a duplicate key (a second copy left out of the index) are bad
            samples too.
        max_pixels: Images with more pixels (read from the file header) are never decoded: they are
            bad samples, handled as ``on_error`` says. The default is PIL's decompression-bomb limit
            (about 179 million pixels, 537 MB decoded); ``None`` removes the limit.
        hw_decoder_load: On a GPU, the share of JPEGs given to the hardware JPEG decoder where the GPU
            has one (A100, H100, H200...); ``None``: DALI's default (0.65).
        device_memory_padding, host_memory_padding: On a GPU, the bytes nvJPEG preallocates per decoder
            thread on the device and in pinned host memory (twice); ``None``: DALI's defaults (16 MiB
            and 8 MiB). Lower them with many ranks per host.
        set_affinity: Pin DALI's CPU threads to the cores nearest the GPU (DALI's ``set_affinity``).
        roi_decode: Decode only the crop's window (training's random crop, evaluation's center crop
            with the filter's reach); ``False``: decode whole images and crop after, the same transform
            (evaluation: the same pixels). Default: True on the CPU, False on a GPU, where window
            decoding fails on A100/H100-class GPUs with nvImageCodec 0.9 (nvImageCodec issue 55) and
            the hardware JPEG decoder decodes whole images only.

    ``DataLoader``'s other arguments are accepted at their defaults (``timeout``, ``worker_init_fn``,
    ``multiprocessing_context``, ``generator``, ``pin_memory_device``, ``in_order``, ``batch_sampler``)
    and refused otherwise with what to use; ``persistent_workers`` changes nothing (there are no
    workers; an unshuffled evaluation keeps its pipeline across epochs anyway).

    Every rank yields the same number of batches per epoch (``len(loader)``, exact), so DDP never waits
    on a rank that ran out. With ``drop_last=False`` one epoch yields every sample of the source exactly
    once across the ranks; ranks that hold one sample less than the largest get one padding sample
    (a copy of their last one) whose label is ``PAD_LABEL`` (-100, ignored by ``CrossEntropyLoss``) and
    whose index is -1. Count real samples with ``dali_resizer.real_mask(labels)`` (``labels !=
    PAD_LABEL``), so evaluation counts every sample once.

    Epochs work as DataLoader's with a ``DistributedSampler``: ``loader.set_epoch(e)`` (or
    ``loader.sampler.set_epoch(e)``) sets the epoch the next iteration reads; without it, each iteration
    that starts reads the next epoch. ``iter(loader)`` builds nothing: an iterator claims its epoch on
    its first ``next()``, and several iterators are independent. ``state_dict()`` /
    ``load_state_dict()`` resume an epoch at the batch where it stopped, with the same samples and
    augmentations (DALI checkpointing), also after an exception raised inside ``next()``.

    Example:
        >>> loader = DALILoader("imagenet/train", batch_size=64, shuffle=True, size=448)  # doctest: +SKIP
        >>> for epoch in range(epochs):  # doctest: +SKIP
        ...     loader.set_epoch(epoch)
        ...     for images, labels in loader:
        ...         loss = criterion(model(images), labels)
    """

    def __init__(
        self,
        source,
        batch_size: int = 1,
        shuffle: bool | None = None,
        sampler=None,
        batch_sampler=None,
        num_workers: int | None = None,
        collate_fn=None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn=None,
        multiprocessing_context=None,
        generator=None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        size: int | tuple[int, int] = 448,
        train: bool | None = None,
        num_threads: int | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
        shard_id: int | None = None,
        num_shards: int | None = None,
        dtype: torch.dtype = torch.float32,
        memory_format: torch.memory_format = torch.contiguous_format,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        crop_ratio: float = 0.875,
        random_area: tuple[float, float] = (0.08, 1.0),
        random_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bilinear",
        hflip: float = 0.5,
        auto_augment: str | None = None,
        ra_num_ops: int = 2,
        ra_magnitude: int = 9,
        augment_bins: int = 31,
        augment_interpolation: str | None = None,
        color_jitter: tuple[float, float, float, float] | None = None,
        random_erase: float = 0.0,
        erase_scale: tuple[float, float] = (0.02, 0.33),
        erase_ratio: tuple[float, float] = (0.3, 3.3),
        erase_value: float = 0.0,
        prefetch_queue_depth: int | None = None,
        return_index: bool = False,
        index_dir: str | os.PathLike | None = None,
        on_error: str = "raise",
        max_pixels: int | None = MAX_PIXELS,
        hw_decoder_load: float | None = None,
        device_memory_padding: int | None = None,
        host_memory_padding: int | None = None,
        set_affinity: bool = False,
        roi_decode: bool | None = None,
        cache: bool | str | os.PathLike = True,
        cache_limit: int | str | None = None,
    ) -> None:
        graph = dict(  # what the graph does to each image, besides size and train: the TransformSpec's
            mean=mean, std=std, crop_ratio=crop_ratio, random_area=random_area, random_aspect_ratio=random_aspect_ratio,
            interpolation=interpolation, hflip=hflip, auto_augment=auto_augment, ra_num_ops=ra_num_ops,
            ra_magnitude=ra_magnitude, augment_bins=augment_bins, augment_interpolation=augment_interpolation,
            color_jitter=color_jitter, random_erase=random_erase, erase_scale=erase_scale,
            erase_ratio=erase_ratio, erase_value=erase_value)
        if is_image_dataset(source) and source.transform is not None:  # its transform decides the graph's work
            from dali_resizer.transforms import settings_from_transform

            settings = settings_from_transform(source.transform)
            if train is not None and train != settings["train"]:
                kind = "a training" if settings["train"] else "an evaluation"
                raise ValueError(f"train={train!r}, but the dataset's transform is {kind} one ({source.transform!r})")
            chosen, defaults = {**graph, "size": size, "dtype": dtype}, inspect.signature(DALILoader).parameters
            for name, value in settings.items():  # an argument given, that the transform sets otherwise, is refused
                given = chosen.get(name, value)
                if not _same(given, value) and not _same(given, defaults[name].default):
                    raise ValueError(f"{name}={given!r}, but the dataset's transform sets {name}={value!r} "
                                     f"({source.transform!r}): the transform decides the graph; drop the argument")
            size, train, dtype = settings["size"], settings["train"], settings["dtype"]
            graph |= {name: value for name, value in settings.items() if name in graph}
        given = {"batch_sampler": batch_sampler, "worker_init_fn": worker_init_fn, "generator": generator,
                 "multiprocessing_context": multiprocessing_context, "timeout": timeout,
                 "pin_memory_device": pin_memory_device, "in_order": in_order}
        for name, value in given.items():
            if value is not _DEFAULTS[name] and value != _DEFAULTS[name]:
                raise ValueError(f"DALILoader does not take {name}={value!r}: {_REFUSED[name]}")
        if collate_fn is not None and collate_fn is not default_collate:
            raise ValueError(f"DALILoader does not take collate_fn={collate_fn!r}: DALI assembles the batches "
                             f"itself, as default_collate would (images (N, 3, H, W), labels (N,)); transform them "
                             f"after the loader, on the device (collate_fn=None or default_collate are accepted)")
        if batch_size is None:
            raise ValueError("batch_size=None (no batching) is not supported: DALI delivers batches; pass an int")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        try:
            size = to_size(size)
        except TypeError as e:
            raise ValueError(str(e)) from None
        if num_workers is not None:
            if num_threads is not None:
                raise ValueError("pass num_threads= or num_workers= (torch's name for it), not both")
            if not isinstance(num_workers, int) or num_workers < 0:
                raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
            num_threads = max(num_workers, 1)
        resolved_device = resolve_device(device)
        if num_threads is None:
            num_threads = default_threads(resolved_device)
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        if prefetch_factor is not None:
            if prefetch_queue_depth is not None:
                raise ValueError("pass prefetch_queue_depth= or prefetch_factor= (torch's name for it), not both")
            prefetch_queue_depth = prefetch_factor
        prefetch_queue_depth = 2 if prefetch_queue_depth is None else prefetch_queue_depth
        if not isinstance(prefetch_queue_depth, int) or prefetch_queue_depth < 1:
            raise ValueError(f"prefetch_queue_depth must be a positive int, got {prefetch_queue_depth!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        order = _order_from(sampler, shuffle, seed, drop_last, shard_id, num_shards)
        shuffle, seed, drop_last, shard_id, num_shards = (order[k] for k in ("shuffle", "seed", "drop_last",
                                                                             "shard_id", "num_shards"))
        if shard_id is None or num_shards is None:
            rank, world = distributed_rank_and_world()
            shard_id = rank if shard_id is None else shard_id
            num_shards = world if num_shards is None else num_shards
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
        if not isinstance(shard_id, int) or not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id!r}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
        if memory_format not in (torch.contiguous_format, torch.channels_last):
            raise ValueError(f"memory_format must be torch.contiguous_format or torch.channels_last, "
                             f"got {memory_format!r}")
        if max_pixels is not None and (not isinstance(max_pixels, int) or isinstance(max_pixels, bool)
                                       or max_pixels < 1):
            raise ValueError(f"max_pixels must be a positive int, or None for no limit, got {max_pixels!r}")
        if hw_decoder_load is not None and (not _is_number(hw_decoder_load) or not 0 <= hw_decoder_load <= 1):
            raise ValueError(f"hw_decoder_load must be a number in [0, 1], or None, got {hw_decoder_load!r}")
        for name, value in (("device_memory_padding", device_memory_padding),
                            ("host_memory_padding", host_memory_padding)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative int (bytes), or None, got {value!r}")
        if train is not None and not isinstance(train, bool):
            raise ValueError(f"train must be True, False or None (the value of shuffle), got {train!r}")
        if roi_decode is not None and not isinstance(roi_decode, bool):
            raise ValueError(f"roi_decode must be True, False or None (True on the CPU, False on a GPU), "
                             f"got {roi_decode!r}")
        if roi_decode and resolved_device.type == "cuda":
            warnings.warn("roi_decode=True on a GPU: window decoding crashes or fails on A100/H100-class GPUs with "
                          "nvImageCodec 0.9, which DALI 2.4 requires (nvImageCodec issue 55); roi_decode=False, the "
                          "GPU default, decodes whole images", stacklevel=2)

        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.device = resolved_device
        self.dtype = dtype
        self.memory_format = memory_format
        #: what the graph does to each image (``dali_resizer.spec``): one frozen, checked description
        self.spec = TransformSpec(
            size=size, train=self.shuffle if train is None else train, **graph,
            dtype="float16" if dtype == torch.float16 else "float32",  # (bfloat16: cast from float32 on the device)
            layout="HWC" if memory_format == torch.channels_last else "CHW",
            max_pixels=max_pixels if max_pixels is not None else 2**31 - 1,
            roi_decode=roi_decode if roi_decode is not None else resolved_device.type == "cpu")
        self.drop_last = bool(drop_last)
        self.num_threads = num_threads
        self.seed = int(seed)
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.prefetch_queue_depth = prefetch_queue_depth
        self.return_index = bool(return_index)
        if pin_memory and self.device.type == "cpu" and not torch.cuda.is_available():
            warnings.warn("pin_memory=True, but there is no CUDA device to copy batches to: batches are not pinned",
                          stacklevel=2)
        # DataLoader's attributes, with what they are here
        self.pin_memory = bool(pin_memory) and self.device.type == "cpu" and torch.cuda.is_available()
        self.num_workers = 0  # (no worker processes: DALI's num_threads threads run in this process)
        self.collate_fn = default_collate
        self.persistent_workers = False
        self.prefetch_factor = None  # (DataLoader's, per worker process; DALI's is prefetch_queue_depth)
        self.timeout, self.worker_init_fn, self.multiprocessing_context, self.generator = 0, None, None, None
        self.pin_memory_device, self.in_order = "", True
        self.on_error = on_error
        # the GPU decoder's settings (None: DALI's default); a CPU loader has no use for them
        self.decoder_options = {name: value for name, value in (
            ("hw_decoder_load", hw_decoder_load), ("device_memory_padding", device_memory_padding),
            ("host_memory_padding", host_memory_padding)) if value is not None}
        self.set_affinity = bool(set_affinity)
        self._ledger = BadSamples(on_error)
        self.dataset = LoaderDataset(open_source(source, index_dir), self)
        if len(self.dataset) == 0:
            raise ValueError(f"{self.dataset_location()}: the source holds no samples")
        self.cache = _shard_cache(self.dataset.source, cache, cache_limit)  # (a ShardCache, or None)
        self.cache_limit = cache_limit
        _refuse_keys_dali_misreads(self.dataset.source, self.cache)
        if order["length"] is not None and order["length"] != len(self.dataset):
            raise ValueError(f"sampler={sampler!r} covers {order['length']} samples, the source has "
                             f"{len(self.dataset)}: build it over the same dataset")
        self.sampler = EpochSampler(len(self.dataset), num_replicas=num_shards, rank=shard_id, shuffle=self.shuffle,
                                    seed=self.seed, drop_last=self.drop_last, follow=order["follow"])
        self.batch_sampler = EpochBatchSampler(self.sampler, batch_size)
        self._reader = self.dataset.source.reader(self._plan(), self._ledger)
        self._ledger.found(self._reader.known_bad())  # (bad samples the indexes already say: raise, or skip)
        self._latest: DALILoaderIter | None = None  # the iterator started last: the position state_dict() saves
        self._spare = None  # an evaluation pass's pipeline, rewound for the next pass

    def _plan(self) -> ReadPlan:
        settings = dict(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=None if self.device.type == "cpu" else self.device.index,
            prefetch_queue_depth=self.prefetch_queue_depth,
            decoder_options=self.decoder_options,
            set_affinity=self.set_affinity and self.device.type == "cuda",
            enable_checkpointing=True,
        )
        return ReadPlan(batch_size=self.batch_size, prefetch_queue_depth=self.prefetch_queue_depth, spec=self.spec,
                        pipeline=settings, sample_indices=self.return_index, cache=self.cache)

    # -- the spec's settings, as attributes ---------------------------------------------------------

    size = property(lambda self: self.spec.size, doc="``(height, width)`` of the delivered images")
    train = property(lambda self: self.spec.train, doc="the training graph (random crop, flip, augmentations)")
    mean = property(lambda self: self.spec.mean)
    std = property(lambda self: self.spec.std)
    crop_ratio = property(lambda self: self.spec.crop_ratio)
    random_area = property(lambda self: self.spec.random_area)
    random_aspect_ratio = property(lambda self: self.spec.random_aspect_ratio)
    roi_decode = property(lambda self: self.spec.roi_decode)
    max_pixels = property(lambda self: self.spec.max_pixels if self.spec.max_pixels < 2**31 - 1 else None)

    # -- DataLoader surface -------------------------------------------------------------------------

    @property
    def classes(self) -> list[str] | None:
        return self.dataset.classes

    @property
    def class_to_idx(self) -> dict[str, int] | None:
        return self.dataset.class_to_idx

    @property
    def skipped(self) -> dict[str, str]:
        """Bad samples skipped so far (``on_error="skip"``): name (the file, or the shard and the key) -> problem."""
        return self._ledger.skipped

    @property
    def num_samples(self) -> int:
        """Real samples of this rank in the epoch due (before ``drop_last``, without padding)."""
        return self.sampler.due().num_samples

    @property
    def samples_per_shard(self) -> int:
        """What every rank delivers in the epoch due: the largest part (padded up to it) without
        ``drop_last``, the smallest with it (``len(loader.sampler)``)."""
        return self.sampler.due().samples_per_shard

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that the next iteration reads (``loader.sampler.set_epoch``): its order and
        augmentations depend on ``(seed, epoch)`` only. Without calls, each iteration started reads the
        epoch after the last one started."""
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> DALILoaderIter:
        return DALILoaderIter(self)

    def _started(self, iterator: DALILoaderIter) -> None:
        """An iterator claimed its epoch: its position is the loader's from now on. An unfinished one
        that nobody holds any longer is let go before the new one builds its pipeline."""
        previous, self._latest = self._latest, iterator
        if previous is not None and not previous.finished:
            del previous
            release_unused(self.device)

    def state_dict(self) -> dict:
        """Where the loader stands: the epoch in progress (the iterator started last, unless it has
        returned every batch) and how far it got, with DALI's checkpoint of its readers and random
        generators, or else the epoch due, where the next iteration starts.

        Mid-epoch it also holds the samples this rank has delivered (``delivered``: runs of sample ids),
        so that the states of all ranks together say what the world has read of the epoch (see
        :meth:`load_state_dict`)."""
        latest = self._latest
        running = latest is not None and latest.position is not None and not latest.finished
        return {"seed": self.seed, "num_shards": self.num_shards, "shard_id": self.shard_id,
                "num_source_samples": len(self.dataset), **self._pipeline_identity(), "skipped": dict(self.skipped),
                **self._reader.state_dict(), **(latest.state_dict() if running else self.sampler.state_dict())}

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Continues from :meth:`state_dict`: the next iteration resumes that epoch after its last
        delivered batch.

        ``state``: this rank's own state, or the list of every rank's states (``all_gather_object``
        them when saving). In the world that saved them (same ranks, same batch size), an epoch
        resumes exactly: the batches an uninterrupted run would have yielded, with the same samples
        and augmentations. The list of all ranks' states also loads into a world of any other size or
        batch size: at an epoch boundary the epoch is read as any fresh world reads it; mid-epoch the
        samples no rank had delivered are split among the new world's ranks, each read exactly once
        (that epoch then has fewer batches: ``len(loader)`` says how many), and the next epochs are
        whole. ``skipped`` and the shards' skipped samples are merged from all states.

        A state that is not one (a missing key, a value of the wrong type, a position outside its
        epoch) is refused with a ``ValueError`` naming the field."""
        if isinstance(state, (list, tuple)):
            states = [_checked_state(s, f"state {k}") for k, s in enumerate(state)]
            self._load_world(states)
            return
        state = _checked_state(state, "state")
        mid_epoch = bool(state["batches_done"]) or "carried" in state
        checked = [("seed", self.seed), ("num_source_samples", len(self.dataset))]
        if mid_epoch:
            checked += [("num_shards", self.num_shards), ("shard_id", self.shard_id)]
        for key, mine in checked:
            if state.get(key) != mine:
                where = (" (a mid-epoch state of one rank resumes in the world that saved it; pass the list of every "
                         "rank's states to resume in another world)") if key in ("num_shards", "shard_id") else ""
                raise ValueError(f"loader state is for {key}={state.get(key)!r}, this loader has {key}={mine!r}"
                                 + where)
        for key, mine in self._pipeline_identity().items() if mid_epoch else ():  # (saved without them: unchecked)
            if key in state and state[key] != mine:
                raise ValueError(
                    f"loader state is for {key}={state[key]!r}, this loader has {key}={mine!r}: its position and "
                    f"DALI checkpoint hold only for a loader built the same way; build it with {key}={state[key]!r}, "
                    f"or pass the list of every rank's states, which resumes the epoch with any build")
        if state["batches_done"]:
            carried = Carried(state["epoch"], np.asarray(state["carried"], dtype=np.int64).reshape(-1, 2)) if (
                "carried" in state) else None
            length = self._epoch_batches(carried)
            if state["batches_done"] > length:
                raise ValueError(f"loader state: batches_done={state['batches_done']} is past the end of its epoch "
                                 f"({length} batches)")
            if state["base"] > state["batches_done"]:
                raise ValueError(f"loader state: base={state['base']} is past batches_done={state['batches_done']}")
            if state["dali"] is None and state["base"] != state["batches_done"]:
                raise ValueError(f"loader state: dali=None at batch {state['batches_done']} of epoch "
                                 f"{state['epoch']}: a mid-epoch position needs DALI's checkpoint (a state saved by "
                                 f"state_dict() has it)")
        self.skipped.update(state.get("skipped", {}))
        self._reader.load_state_dict(state)
        self.sampler.load_state_dict(state)
        self._latest = None

    def _epoch_batches(self, carried: Carried | None) -> int:
        """Batches of the epoch due with ``carried`` read before (a state's own epoch length)."""
        return dataclasses.replace(self.sampler.due(), carried=carried).batches(self.batch_size)

    def _load_world(self, states: list[dict]) -> None:
        """Loads the states of every rank of a world (see :meth:`load_state_dict`)."""
        if not states:
            raise ValueError("load_state_dict() got an empty list of states")
        worlds = {s.get("num_shards") for s in states}
        if len(worlds) != 1 or sorted(s.get("shard_id") for s in states) != list(range(worlds.pop())):
            raise ValueError(f"the states are not one world's: shards {sorted(s.get('shard_id') for s in states)} of "
                             f"{sorted(worlds | {s.get('num_shards') for s in states})}; pass every rank's state, once "
                             f"each (what one rank alone delivered cannot say what the others read)")
        if len({s["epoch"] for s in states}) != 1:
            raise ValueError(f"the ranks' states are at different epochs ({sorted({s['epoch'] for s in states})}): "
                             f"save them at the same step")
        for s in states:
            self.skipped.update(s.get("skipped", {}))
            self._reader.load_state_dict({"bad_keys": s.get("bad_keys", {})})
        mine = next(s for s in states if s["shard_id"] == self.shard_id) if self.num_shards == len(states) else None
        if mine is not None and all(mine.get(k, v) == v for k, v in self._pipeline_identity().items()):
            self.load_state_dict(mine)  # the world that saved them: exact
            return
        first = states[0]
        for key, value in (("seed", self.seed), ("num_source_samples", len(self.dataset))):
            if first.get(key) != value:
                raise ValueError(f"loader state is for {key}={first.get(key)!r}, this loader has {key}={value!r}")
        delivered = union_of_runs(*(np.asarray(s.get("delivered") or [], dtype=np.int64).reshape(-1, 2)
                                    for s in states))
        self.sampler.load_state_dict({"epoch": int(first["epoch"]), "batches_done": 0, "base": 0, "dali": None,
                                      **({"carried": delivered.tolist()} if delivered.size else {})})
        self._latest = None

    def _pipeline_identity(self) -> dict:
        """What a saved position and DALI checkpoint depend on besides the data and the shard: the
        batch size (positions count batches), the order's settings, reading through the shard cache
        (which reads an epoch in spans), and the graph: every setting of the :class:`TransformSpec`
        (its random draws, and the images they give, hold only for the same graph)."""
        return {"batch_size": self.batch_size, "shuffle": self.shuffle, "drop_last": self.drop_last,
                "cached": self.cache is not None, **self.spec.identity()}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._reader.describe()}, samples={len(self.dataset)}, "
            f"batch_size={self.batch_size}, size={self.size}, train={self.train}, shuffle={self.shuffle}, "
            f"device={self.device}, shard={self.shard_id}/{self.num_shards})"
        )

    def dataset_location(self) -> str:
        """Where the source is read from: its root folder, prefix or first tar."""
        return str(getattr(self.dataset, "root", None) or self.dataset.paths[0])

    # -- what an iterator asks of its loader --------------------------------------------------------

    def _build(self, epoch, checkpoint: bytes | None = None, base: int = 0):
        """DALI's PyTorch iterator over this rank's pipeline of ``epoch`` (from ``checkpoint``, else from
        the epoch's batch ``base``)."""
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        pipe = self._reader.pipeline(epoch, checkpoint, base)
        # prepare_first_batch=False: the first batch runs on the first next(), where a bad file is handled
        return DALIGenericIterator([pipe], list(self._reader.output_names), reader_name="Reader",
                                   last_batch_policy=policy, prepare_first_batch=False)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        """DALI's batch as the user asked for it: NHWC (what the pipeline writes for channels_last) as a
        channels-last NCHW view, in ``dtype``."""
        if self.memory_format == torch.channels_last:
            images = images.permute(0, 3, 1, 2)
        return images.to(self.dtype).contiguous(memory_format=self.memory_format)

    def _to_device(self, values: torch.Tensor | None) -> torch.Tensor | None:
        """Labels or indices of a batch on ``self.device`` (from page-locked memory the copy is
        asynchronous; torch caches the pages)."""
        if values is None:
            return None
        if self.device.type == "cuda":
            values = values.pin_memory()
        return values.to(self.device, non_blocking=True)

    def _deliver(self, images, labels, indices):
        if self.pin_memory:
            images, labels = images.pin_memory(), labels.pin_memory()
            indices = indices.pin_memory() if indices is not None else None
        return (images, labels, indices) if self.return_index else (images, labels)

    def _pad(self, images, labels, indices, sample, count: int):
        """Appends ``count`` copies of ``sample`` marked as padding (label ``PAD_LABEL``, index -1)."""
        images = torch.cat([images, sample.expand(count, *sample.shape[1:])])
        labels = torch.cat([labels, torch.full((count,), PAD_LABEL, dtype=torch.int64, device=self.device)])
        if indices is not None:
            indices = torch.cat([indices, torch.full((count,), -1, dtype=torch.int64, device=self.device)])
        return images.contiguous(memory_format=self.memory_format), labels, indices


def _order_from(sampler, shuffle, seed, drop_last, shard_id, num_shards) -> dict:
    """The order's settings from DataLoader's ``sampler=`` (torch's ``SequentialSampler``,
    ``RandomSampler`` or ``DistributedSampler``) and the loader's own arguments; ``length``: the samples
    the sampler covers; ``follow``: a sampler whose ``set_epoch`` the script calls."""
    from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

    order = {"shuffle": bool(shuffle), "seed": seed, "drop_last": bool(drop_last), "shard_id": shard_id,
             "num_shards": num_shards, "length": None, "follow": None}
    if sampler is None:
        return order
    if shuffle:
        raise ValueError("sampler option is mutually exclusive with shuffle (as in DataLoader)")
    if type(sampler) is SequentialSampler:
        order["length"] = len(sampler.data_source)
    elif type(sampler) is RandomSampler:
        if sampler.replacement or sampler._num_samples is not None:
            raise ValueError(f"sampler={sampler!r}: a RandomSampler with replacement or num_samples draws samples "
                             f"more or less than once; DALILoader reads each sample once per epoch")
        order |= {"shuffle": True, "length": len(sampler.data_source)}
        if sampler.generator is not None:
            order["seed"] = int(sampler.generator.initial_seed())
    elif type(sampler) is DistributedSampler:
        rank, world = distributed_rank_and_world()
        for name, mine, env in (("rank", sampler.rank, rank), ("num_replicas", sampler.num_replicas, world)):
            if mine != env:
                raise ValueError(f"sampler={sampler!r} has {name}={mine}, but this process is rank {rank} of a world "
                                 f"of {world} (torch.distributed, or RANK / WORLD_SIZE): build it in the job that "
                                 f"reads, or pass shard_id= and num_shards=")
        for name, mine, given in (("rank", sampler.rank, shard_id), ("num_replicas", sampler.num_replicas, num_shards)):
            if given is not None and given != mine:
                raise ValueError(f"sampler has {name}={mine}, but {given} was passed as its DALILoader argument")
        order |= {"shuffle": bool(sampler.shuffle), "seed": int(sampler.seed),
                  "drop_last": bool(sampler.drop_last or drop_last), "shard_id": sampler.rank,
                  "num_shards": sampler.num_replicas, "length": len(sampler.dataset), "follow": sampler}
    else:
        raise ValueError(f"DALILoader does not take sampler={sampler!r}: it takes torch's SequentialSampler, "
                         f"RandomSampler or DistributedSampler (their order is made in DALI's pipeline); for another "
                         f"order use shuffle=, seed= and set_epoch(), and shard_id= / num_shards=")
    return order


# load_state_dict's fields: name -> (types, the least int allowed or None, what it must be)
_STATE_FIELDS = {
    "epoch": ((int,), 0, "a non-negative int"),
    "batches_done": ((int,), 0, "a non-negative int"),
    "base": ((int,), 0, "a non-negative int"),
    "dali": ((bytes, type(None)), None, "DALI's checkpoint (bytes) or None"),
    "seed": ((int,), None, "an int"),
    "num_shards": ((int,), 1, "a positive int"),
    "shard_id": ((int,), 0, "a non-negative int"),
    "num_source_samples": ((int,), 0, "a non-negative int"),
}


def _checked_state(state, what: str) -> dict:
    """``state`` if it is a loader state (every field present, of its type and range), else a
    ``ValueError`` naming the field."""
    if not isinstance(state, dict):
        raise ValueError(f"load_state_dict(): {what} must be a dict from DALILoader.state_dict() (or a list of "
                         f"every rank's), got {type(state).__name__}")
    for name, (types, least, expected) in _STATE_FIELDS.items():
        if name not in state:
            raise ValueError(f"load_state_dict(): {what} has no {name!r} field; it is not a DALILoader.state_dict()")
        value = state[name]
        if not isinstance(value, types) or isinstance(value, bool) or (least is not None and value < least):
            raise ValueError(f"load_state_dict(): {what}[{name!r}] must be {expected}, got {value!r}")
    for name in ("delivered", "carried"):
        if name in state and state[name] is not None:
            runs = np.asarray(state[name])
            if runs.size and (runs.ndim != 2 or runs.shape[1] != 2 or not np.issubdtype(runs.dtype, np.integer)
                              or (runs < 0).any() or (runs[:, 1] < runs[:, 0]).any()):
                raise ValueError(f"load_state_dict(): {what}[{name!r}] must be [start, stop) runs of sample ids")
    return state


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a, b) -> bool:
    """Two settings alike: numbers by value, sequences element by element (``224`` is ``(224, 224)``)."""
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        a = list(a) if isinstance(a, (tuple, list)) else [a] * len(b)
        b = list(b) if isinstance(b, (tuple, list)) else [b] * len(a)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
