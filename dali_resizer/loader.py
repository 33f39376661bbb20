"""``DALILoader``: a drop-in for ``torch.utils.data.DataLoader`` that reads, decodes and augments with DALI."""

from __future__ import annotations

import gc
import os
import re
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from dali_resizer.readers import ReadPlan, open_source
from dali_resizer.readers.base import Carried, union_of_runs
from dali_resizer.samples import (
    DEVICE_FAILURE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_PIXELS,
    PAD_LABEL,
    BadSampleError,
    BadSamples,
)
from dali_resizer.utils import to_size

__all__ = ["MAX_PIXELS", "PAD_LABEL", "BadSampleError", "DALILoader", "default_threads", "distributed_rank_and_world",
           "local_gpu", "resolve_device"]

# DataLoader arguments with no meaning here: what to use instead. Passing their default is accepted.
_REFUSED = {
    "collate_fn": (None, "DALI assembles the batches itself: images (N, 3, H, W) and labels (N,); transform "
                   "them after the loader, on the device"),
    "sampler": (None, "the loader orders the samples itself: shuffle=, seed= and set_epoch() decide the order, "
                "and shard_id= / num_shards= (default: torch.distributed's rank and world size) replace "
                "DistributedSampler"),
    "batch_sampler": (None, "use batch_size= and drop_last="),
    "worker_init_fn": (None, "there are no worker processes: DALI runs num_threads threads in this process"),
    "multiprocessing_context": (None, "there are no worker processes: DALI runs num_threads threads in this process"),
    "generator": (None, "pass seed= (an int): with set_epoch() it decides the order and the augmentations"),
    "timeout": (0, "DALI's reads take no timeout; a read that fails raises"),
    "pin_memory_device": ("", "pass device= (where the batches are delivered)"),
    "in_order": (True, "DALI delivers the batches in order"),
}

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

    Replaces ``torch.utils.data.DataLoader`` over an ImageFolder or WebDataset shards. Images are decoded
    at native resolution (nvJPEG on a GPU, libjpeg-turbo on the CPU), cropped, flipped and resized with
    an antialiased filter to the working ``size`` (the learnable resizer's input, e.g. 448), normalized
    with ``mean`` and ``std``, and handed over on ``device`` without a host round trip.

    Args:
        source: An image folder (``root/<class>/<image>``, labels as torchvision's ``ImageFolder``), a
            folder of WebDataset ``.tar`` shards, one ``.tar``, a list of them, a brace pattern
            (``"train-{000000..000127}.tar"``), or a file list written by ``python -m
            dali_resizer.check --write-list``. Shards are read with a DALI index file:
            ``<shard>.idx`` beside each tar, or one built once into ``index_dir``.
        batch_size: Samples per batch.
        size: Working size of the delivered images, an int or ``(height, width)``.
        train: Random-resized-crop and random flip when True; resize and center crop when False.
        shuffle: Reshuffle every epoch; defaults to ``train``.
        drop_last: Drop the last batch when it is smaller than ``batch_size``.
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
        prefetch_queue_depth: Batches DALI prepares ahead (default 2).
        return_index: Also yield each sample's index in the source (``(images, labels, indices)``).
        index_dir: Where missing WebDataset index files are built (default: the user cache).
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
            with the filter's reach). ``False``: decode whole images and crop after, the same
            transform (evaluation: the same pixels); on a GPU that lets the hardware JPEG decoder,
            which does not decode windows, take its share, at the cost of whole images in memory.

    ``DataLoader``'s own arguments: ``num_workers`` is torch's name for ``num_threads`` (DALI has
    threads, not worker processes: ``N > 0`` gives ``N`` threads, ``0`` one); ``prefetch_factor`` is
    ``prefetch_queue_depth``; ``pin_memory=True`` delivers CPU batches in page-locked memory (batches
    on a GPU are there already); ``persistent_workers`` changes nothing (an unshuffled evaluation keeps
    its pipeline across epochs anyway, and each training epoch's pipeline is seeded by its epoch).
    ``collate_fn``, ``sampler``, ``batch_sampler``, ``worker_init_fn``, ``generator`` and
    ``multiprocessing_context`` are refused with what to use instead.

    Every shard yields the same number of batches per epoch (``len(loader)``, exact), so DDP never waits
    on a rank that ran out. With ``drop_last=False`` one epoch yields every sample of the source exactly
    once across the shards; shards that hold one sample less than the largest get one padding sample
    (a copy of their last one) whose label is ``PAD_LABEL`` (-100, ignored by ``CrossEntropyLoss``) and
    whose index is -1. Count real samples with ``dali_resizer.real_mask(labels)`` (``labels !=
    PAD_LABEL``), so evaluation counts every sample once. With ``drop_last=True`` every shard stops
    after the same number of full batches. ``state_dict()`` / ``load_state_dict()`` resume an epoch at
    the batch where it stopped, with the same samples and augmentations (DALI checkpointing).

    Example:
        >>> loader = DALILoader("imagenet/train", batch_size=64, size=448)  # doctest: +SKIP
        >>> for epoch in range(epochs):  # doctest: +SKIP
        ...     loader.set_epoch(epoch)
        ...     for images, labels in loader:
        ...         loss = criterion(model(images), labels)
    """

    def __init__(
        self,
        source: str | os.PathLike | list[str | os.PathLike],
        batch_size: int,
        *,
        size: int | tuple[int, int] = 448,
        train: bool = True,
        shuffle: bool | None = None,
        drop_last: bool = False,
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
        prefetch_queue_depth: int | None = None,
        return_index: bool = False,
        index_dir: str | os.PathLike | None = None,
        on_error: str = "raise",
        max_pixels: int | None = MAX_PIXELS,
        hw_decoder_load: float | None = None,
        device_memory_padding: int | None = None,
        host_memory_padding: int | None = None,
        set_affinity: bool = False,
        roi_decode: bool = True,
        num_workers: int | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        **dataloader_kwargs,
    ) -> None:
        for name, value in dataloader_kwargs.items():
            if name not in _REFUSED:
                raise TypeError(f"DALILoader() got an unexpected keyword argument {name!r}")
            default, instead = _REFUSED[name]
            if value != default:
                raise ValueError(f"DALILoader does not take {name}=: {instead}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        try:
            self.size = to_size(size)
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
        mean, std = _channel_triple(mean, "mean"), _channel_triple(std, "std")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std!r}")
        if not _is_number(crop_ratio) or not 0 < crop_ratio <= 1:
            raise ValueError(f"crop_ratio must be a number in (0, 1], got {crop_ratio!r}")
        area = _number_pair(random_area)
        if area is None or not 0 < area[0] <= area[1] <= 1:
            raise ValueError(f"random_area must be (low, high) with 0 < low <= high <= 1, got {random_area!r}")
        aspect = _number_pair(random_aspect_ratio)
        if aspect is None or not 0 < aspect[0] <= aspect[1]:
            raise ValueError(
                f"random_aspect_ratio must be (low, high) with 0 < low <= high, got {random_aspect_ratio!r}")
        if max_pixels is not None and (not isinstance(max_pixels, int) or isinstance(max_pixels, bool)
                                       or max_pixels < 1):
            raise ValueError(f"max_pixels must be a positive int, or None for no limit, got {max_pixels!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if hw_decoder_load is not None and (not _is_number(hw_decoder_load) or not 0 <= hw_decoder_load <= 1):
            raise ValueError(f"hw_decoder_load must be a number in [0, 1], or None, got {hw_decoder_load!r}")
        for name, value in (("device_memory_padding", device_memory_padding),
                            ("host_memory_padding", host_memory_padding)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative int (bytes), or None, got {value!r}")

        self.batch_size = batch_size
        self.train = bool(train)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.drop_last = bool(drop_last)
        self.num_threads = num_threads
        self.device = resolved_device
        self.seed = int(seed)
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.dtype = dtype
        self.memory_format = memory_format
        self.mean, self.std = mean, std
        self.crop_ratio = float(crop_ratio)
        self.random_area, self.random_aspect_ratio = area, aspect
        self.prefetch_queue_depth = prefetch_queue_depth
        self.return_index = bool(return_index)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        if self.pin_memory and self.device.type == "cpu" and not torch.cuda.is_available():
            warnings.warn("pin_memory=True, but there is no CUDA device to copy batches to: batches are not pinned",
                          stacklevel=2)
        self.on_error = on_error
        self.max_pixels = max_pixels
        # the GPU decoder's settings (None: DALI's default); a CPU loader has no use for them
        self.decoder_options = {name: value for name, value in (
            ("hw_decoder_load", hw_decoder_load), ("device_memory_padding", device_memory_padding),
            ("host_memory_padding", host_memory_padding)) if value is not None}
        self.set_affinity = bool(set_affinity)
        if not isinstance(roi_decode, bool):
            raise ValueError(f"roi_decode must be True or False, got {roi_decode!r}")
        self.roi_decode = roi_decode
        self._ledger = BadSamples(on_error)
        self.dataset = open_source(source, index_dir)
        self._reader = self.dataset.reader(self._plan(), self._ledger)
        self._epoch = 0
        self._finished = None  # an evaluation iterator that ran to its end, to rewind
        self._active = None  # (epoch, DALI iterator, batches yielded, base) of the epoch in progress
        self._running = None  # the generator of the epoch in progress
        self._resume: dict | None = None

    def _plan(self) -> ReadPlan:
        settings = dict(  # (DALI's names for the dtype and the decoder: see ReadPlan.pipeline_settings)
            size=self.size,
            train=self.train,
            dtype="float16" if self.dtype == torch.float16 else "float32",
            layout="HWC" if self.memory_format == torch.channels_last else "CHW",
            mean=self.mean,
            std=self.std,
            crop_ratio=self.crop_ratio,
            random_area=self.random_area,
            random_aspect_ratio=self.random_aspect_ratio,
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=None if self.device.type == "cpu" else self.device.index,
            prefetch_queue_depth=self.prefetch_queue_depth,
            max_pixels=min(self.max_pixels if self.max_pixels is not None else 2**31 - 1, 2**31 - 1),  # (int32)
            decoder_options=self.decoder_options,
            set_affinity=self.set_affinity and self.device.type == "cuda",
            roi_decode=self.roi_decode,
            enable_checkpointing=True,
        )
        return ReadPlan(batch_size=self.batch_size, shard_id=self.shard_id, num_shards=self.num_shards,
                        shuffle=self.shuffle, seed=self.seed, drop_last=self.drop_last,
                        prefetch_queue_depth=self.prefetch_queue_depth, pipeline=settings,
                        sample_indices=self.return_index)

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
        """Real samples in this shard per epoch (before ``drop_last``, without padding)."""
        return self._reader.num_samples

    @property
    def samples_per_shard(self) -> int:
        """What every shard delivers per epoch: the largest shard's size (padded up to it) without
        ``drop_last``, the smallest's with it."""
        return self._reader.samples_per_shard

    def __len__(self) -> int:
        return self._reader.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that the next iteration runs: its order and augmentations depend on
        ``(seed, epoch)`` only. Without calls, each iteration advances the epoch by one."""
        self._epoch = int(epoch)
        self._drop_carried(self._epoch)

    def _drop_carried(self, epoch: int) -> None:
        """An epoch taken over from another world is read once: any other epoch is a whole one."""
        if self._reader.carried is not None and self._reader.carried.epoch != epoch:
            self._reader.carried = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch = self._epoch
        self._epoch += 1
        self._drop_carried(epoch)
        resume, self._resume = self._resume, None
        if self._running is not None:  # an epoch left unfinished: its pipeline goes before the next is built
            self._running.close()
            self._running = None
            if self._active is not None and not isinstance(self._active[1], _Frozen):
                self._active = None
            self._release_unused()
        if len(self) == 0:
            self._drop_carried(epoch + 1)
            return iter(())
        self._running = self._iterate(epoch, resume if resume and resume["epoch"] == epoch else None)
        return self._running

    def state_dict(self) -> dict:
        """Where the loader stands: the epoch in progress and how far it got, with DALI's checkpoint of
        its readers and random generators, or the next epoch when none is in progress.

        Mid-epoch it also holds the samples this shard has delivered (``delivered``: runs of sample
        ids), so that the states of all ranks together say what the world has read of the epoch (see
        :meth:`load_state_dict`)."""
        state = {"epoch": self._epoch, "batches_done": 0, "base": 0, "dali": None, "seed": self.seed,
                 "num_shards": self.num_shards, "shard_id": self.shard_id, "num_source_samples": len(self.dataset),
                 **self._pipeline_identity(), "skipped": dict(self.skipped), **self._reader.state_dict()}
        carried = self._reader.carried_for(self._epoch if self._active is None else self._active[0])
        if carried is not None:  # an epoch taken over from another world: what it had read decides the split
            state["carried"] = carried.runs.tolist()
            state["delivered"] = carried.runs.tolist()
        if self._active is not None:
            epoch, batches, done, base = self._active
            state |= {"epoch": epoch, "batches_done": done, "base": base,
                      "delivered": self._reader.delivered().tolist()}
            if batches is not None:
                state["dali"] = batches.checkpoints()[0]
        return state

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Continues from :meth:`state_dict`: the next iteration resumes that epoch after its last
        delivered batch.

        ``state``: this rank's own state, or the list of every rank's states (``all_gather_object``
        them when saving). In the world that saved them (same shards, same batch size), an epoch
        resumes exactly: the batches an uninterrupted run would have yielded, with the same samples
        and augmentations. The list of all ranks' states also loads into a world of any other size or
        batch size: at an epoch boundary the epoch is read as any fresh world reads it; mid-epoch the
        samples no rank had delivered are split among the new world's shards, each read exactly once
        (that epoch then has fewer batches: ``len(loader)`` says how many), and the next epochs are
        whole. ``skipped`` and the shards' skipped samples are merged from all states."""
        if isinstance(state, (list, tuple)):
            self._load_world(list(state))
            return
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
        self._epoch = int(state["epoch"])
        self.skipped.update(state.get("skipped", {}))
        self._reader.load_state_dict(state)
        self._reader.carried = (Carried(self._epoch, np.asarray(state["carried"], dtype=np.int64).reshape(-1, 2))
                                if "carried" in state else None)
        self._resume = state if state["batches_done"] else None

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
        self._epoch = int(first["epoch"])
        self._resume = None
        self._reader.carried = Carried(self._epoch, delivered) if delivered.size else None
    def _pipeline_identity(self) -> dict:
        """What a saved position and DALI checkpoint depend on besides the data and the shard: the
        batch size (positions count batches) and the pipeline's graph (training or evaluation, the
        form of decoding: its random draws differ)."""
        return {"batch_size": self.batch_size, "train": self.train, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "roi_decode": self.roi_decode}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._reader.describe()}, samples={len(self.dataset)}, "
            f"batch_size={self.batch_size}, size={self.size}, train={self.train}, shuffle={self.shuffle}, "
            f"device={self.device}, shard={self.shard_id}/{self.num_shards})"
        )

    # -- DALI ---------------------------------------------------------------------------------------

    def _iterate(self, epoch: int, resume: dict | None) -> Iterator[tuple[torch.Tensor, ...]]:
        done = resume["batches_done"] if resume else 0
        base = resume.get("base", 0) if resume else 0  # batch at which the current pipeline's list starts
        self._reader.begin(resume.get("delivered") if resume else None)
        n, b = self.num_samples, self.batch_size
        real_batches = n // b if self.drop_last else -(-n // b)
        padding = 0 if self.drop_last else self.samples_per_shard - self.num_samples  # 0 or 1 sample
        # Evaluation without shuffling is the same pass every epoch: keep its pipeline (and its threads,
        # decoder state and buffers) and rewind it, when the last pass ran to the end.
        reusable = not self.train and not self.shuffle and resume is None
        batches, self._finished = (self._finished if reusable else None), None
        build = batches is None and done < real_batches  # (done >= real_batches: only padding was left)
        checkpoint = resume["dali"] if resume else None
        rebuilt = False  # a pipeline rebuilt mid-epoch around a bad sample
        if batches is not None:
            batches.reset()
        self._active = (epoch, batches, done, base)
        last = None
        while build or batches is not None:
            try:
                if build:
                    batches, build, checkpoint = self._make_iterator(epoch, checkpoint, base), False, None
                    self._active = (epoch, batches, done, base)
                for (out,) in batches:
                    if done >= len(self):  # drop_last: every shard stops after the same number of batches
                        break
                    images = out["images"]
                    if images.shape[0] == 0:  # DALI's equalisation across reader shards: an all-padding batch
                        continue
                    images = self._images(images)
                    labels, indices = self._labels(out)
                    if padding and done == real_batches - 1 and images.shape[0] < self.batch_size:
                        images, labels, indices = self._pad(images, labels, indices, images[-1:], padding)
                        padding = 0
                    last = images[-1:]
                    done += 1
                    self._active = (epoch, batches, done, base)
                    yield self._deliver(images, labels, indices)
                break
            except RuntimeError as error:  # DALI stopped: name the sample, then raise or skip it
                if "pipeline" not in str(error).lower():
                    raise
                # The stopped pipeline is dropped (its position kept for state_dict) before any other is built:
                # DALI's memory pools do not shrink, so two pipelines at once would hold both their memory.
                checkpoint = self._keep_position(epoch, batches, done, base)
                batches = None
                self._release_unused()
                if DEVICE_FAILURE.search(str(error)):  # the GPU failed, not a sample: never skipped as bad data
                    said = next(line.strip() for line in str(error).splitlines() if DEVICE_FAILURE.search(line))
                    kind = torch.OutOfMemoryError if "memory" in str(error).lower() else RuntimeError
                    raise kind(f"DALI's GPU work failed after batch {done} of epoch {epoch} on {self.device} (not a "
                               f"bad sample; DALI: {said}); free GPU memory, or lower batch_size or "
                               f"device_memory_padding: loader.state_dict() resumes there") from error
                if _STORAGE_FAILED.search(str(error)):  # not a sample's fault: the storage went away
                    raise self._storage_failure(error, epoch, done) from None
                try:
                    restart = self._reader.recover(error, epoch, done, checkpoint)
                except RuntimeError as again:  # (DALI may lose the reason: then the replay's build says it)
                    if not _STORAGE_FAILED.search(str(again)):
                        raise
                    raise self._storage_failure(again, epoch, done) from None
                checkpoint = restart.checkpoint
                if restart.base is not None:
                    base = restart.base
                build, rebuilt = True, True
        if padding and done < len(self):  # this shard's samples ended on a full batch: one of padding
            empty = torch.empty(0, dtype=torch.int64, device=self.device)
            if last is None:
                last = torch.zeros((1, 3, *self.size), dtype=self.dtype, device=self.device).contiguous(
                    memory_format=self.memory_format)
            images, labels, indices = self._pad(last[:0], empty, empty, last, padding)
            done += 1
            self._active = (epoch, None, done, base)
            yield self._deliver(images, labels, indices)
        self._active = None  # finished; an abandoned epoch keeps its state for state_dict()
        self._drop_carried(epoch + 1)  # (an epoch taken over from another world is read once)
        if reusable and not rebuilt:  # (a pipeline rebuilt mid-epoch may cover only the rest)
            self._finished = batches

    def _storage_failure(self, error: RuntimeError, epoch: int, done: int) -> OSError:
        """What to raise when the storage failed under DALI's reader: the object removed while the epoch
        ran, named (``FileNotFoundError``), else the storage unreachable (``ConnectionError``)."""
        gone = self._reader.missing(epoch, done) if "curlCode" not in str(error) else []
        if gone:
            return FileNotFoundError(f"{gone[0]}: removed while epoch {epoch} was read (after batch {done}); put it "
                                     f"back and loader.state_dict() resumes the epoch there")
        return ConnectionError(
            f"{self._reader.describe()} at {self.dataset_location()}: reading stopped after batch {done} of epoch "
            f"{epoch} (DALI: {self._reader.dali_message(error)[0]}); loader.state_dict() resumes the epoch there "
            f"once the storage answers again")

    def dataset_location(self) -> str:
        """Where the source is read from: its root folder, prefix or first tar."""
        return str(getattr(self.dataset, "root", None) or self.dataset.paths[0])

    def _keep_position(self, epoch: int, batches, done: int, base: int) -> bytes | None:
        """Freezes the epoch's position (with DALI's checkpoint, if the stopped pipeline still gives
        one) so that state_dict() resumes from it, and lets go of the pipeline; returns the checkpoint."""
        try:
            checkpoint = batches.checkpoints()[0] if batches is not None else None
        except Exception:  # noqa: BLE001 (a pipeline that cannot say: the position is still known)
            checkpoint = None
        self._active = (epoch, _Frozen(checkpoint), done, base)
        return checkpoint

    def _release_unused(self) -> None:
        """Frees the pipelines no longer referenced and, on a GPU, hands DALI's unused pool memory back."""
        gc.collect()
        if self.device.type == "cuda":
            from nvidia.dali.backend import ReleaseUnusedMemory

            ReleaseUnusedMemory()

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        """DALI's batch as the user asked for it: NHWC (what the pipeline writes for channels_last) as a
        channels-last NCHW view, in ``dtype``."""
        if self.memory_format == torch.channels_last:
            images = images.permute(0, 3, 1, 2)
        return images.to(self.dtype).contiguous(memory_format=self.memory_format)

    def _deliver(self, images, labels, indices):
        if self.pin_memory and self.device.type == "cpu" and torch.cuda.is_available():
            images, labels = images.pin_memory(), labels.pin_memory()
            indices = indices.pin_memory() if indices is not None else None
        return (images, labels, indices) if self.return_index else (images, labels)

    def _labels(self, out: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels (and sample indices) of a batch on ``self.device``; padding rows are ``PAD_LABEL``."""
        labels, indices = self._reader.labels(out)
        if self.device.type == "cuda":  # (from page-locked memory the copy is asynchronous; torch caches the pages)
            labels = labels.pin_memory()
            indices = indices.pin_memory() if indices is not None else None
        labels = labels.to(self.device, non_blocking=True)
        if indices is not None:
            indices = indices.to(self.device, non_blocking=True)
        return labels, indices

    def _pad(self, images, labels, indices, sample, count: int):
        """Appends ``count`` copies of ``sample`` marked as padding (label ``PAD_LABEL``, index -1)."""
        images = torch.cat([images, sample.expand(count, *sample.shape[1:])])
        labels = torch.cat([labels, torch.full((count,), PAD_LABEL, dtype=torch.int64, device=self.device)])
        if indices is not None:
            indices = torch.cat([indices, torch.full((count,), -1, dtype=torch.int64, device=self.device)])
        return images.contiguous(memory_format=self.memory_format), labels, indices

    def _make_iterator(self, epoch: int, checkpoint: bytes | None = None, base: int = 0):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        pipe = self._reader.pipeline(epoch, checkpoint, base)
        # prepare_first_batch=False: the first batch runs on the first next(), where a bad file is handled
        return DALIGenericIterator([pipe], list(self._reader.output_names), reader_name="Reader",
                                   last_batch_policy=policy, prepare_first_batch=False)


# DALI's words when the object store (or a network file system) fails, not a sample
_STORAGE_FAILED = re.compile(
    r"curlCode|Could not connect to server|Timeout was reached|S3 Object not found|NoSuchKey|"
    r"Failed to flush response stream")


class _Frozen:
    """A stopped epoch's DALI checkpoint, for state_dict()."""

    def __init__(self, checkpoint: bytes | None) -> None:
        self._checkpoint = checkpoint

    def checkpoints(self) -> list[bytes | None]:
        return [self._checkpoint]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_pair(value) -> tuple[float, float] | None:
    """``(low, high)`` as floats from a pair of numbers, else None."""
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_number(v) for v in value):
        return None
    return float(value[0]), float(value[1])


def _channel_triple(values, name: str) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3:
        raise ValueError(f"{name} must be 3 numbers (one per RGB channel), got {values!r}")
    return triple
