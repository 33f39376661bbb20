"""``DALILoader``: a drop-in for ``torch.utils.data.DataLoader`` that reads, decodes and augments with DALI."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import torch

from dali_resizer.sources import ImageFolderSource, ShardSource, open_source

__all__ = ["DALILoader", "parse_ascii_labels", "resolve_device"]

_DTYPES = ("float32", "float16")


def resolve_device(device: torch.device | str | int | None) -> torch.device:
    """``None`` picks the current CUDA device when there is one, else the CPU; a request for a GPU that
    is not there is an error, not a silent fallback."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available here; use device='cpu'")
    index = torch.cuda.current_device() if resolved.index is None else resolved.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def parse_ascii_labels(raw: torch.Tensor) -> torch.Tensor:
    """``(N, L)`` uint8 rows of ASCII digits (WebDataset ``.cls``), zero/whitespace padded, to int64 ``(N,)``."""
    is_digit = (raw >= ord("0")) & (raw <= ord("9"))
    is_blank = (raw == 0) | (raw == ord(" ")) | (raw == ord("\n")) | (raw == ord("\r")) | (raw == ord("\t"))
    bad = ~(is_digit | is_blank).all(dim=1) | ~is_digit.any(dim=1)
    if bad.any():
        row = raw[bad.nonzero()[0, 0]]
        text = bytes(row[row != 0].tolist())
        raise ValueError(f"WebDataset label (.cls) is not a non-negative integer: {text!r}")
    digits = (raw.to(torch.int64) - ord("0")).clamp_(0, 9)
    value = torch.zeros(raw.shape[0], dtype=torch.int64)
    for column in range(raw.shape[1]):
        value = torch.where(is_digit[:, column], value * 10 + digits[:, column], value)
    return value


def _pipeline_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


class DALILoader:
    """Image batches decoded and augmented by NVIDIA DALI, yielded as ``(images, labels)`` torch tensors.

    Replaces ``torch.utils.data.DataLoader`` over an ImageFolder or WebDataset shards. Images are decoded
    at native resolution (nvJPEG on a GPU, libjpeg-turbo on the CPU), cropped, flipped and resized with
    an antialiased filter to the working ``size`` (the learnable resizer's input, e.g. 448), normalized
    with the ImageNet mean and std, and handed over on ``device`` without a host round trip.

    Args:
        source: An image folder (``root/<class>/<image>``, labels as torchvision's ``ImageFolder``), a
            folder of WebDataset ``.tar`` shards, one ``.tar``, a list of them, or a brace pattern
            (``"train-{000000..000127}.tar"``). Shards are read with a DALI index file: ``<shard>.idx``
            beside each tar, or one built once into ``index_dir``.
        batch_size: Samples per batch.
        size: Working size of the delivered images, an int or ``(height, width)``.
        train: Random-resized-crop and random flip when True; resize and center crop when False.
        shuffle: Reshuffle every epoch; defaults to ``train``.
        drop_last: Drop the last batch when it is smaller than ``batch_size``.
        num_threads: DALI CPU worker threads; defaults to the cores this process may use.
        device: ``None`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        seed: Seed of the shuffling order and the augmentations; with ``set_epoch`` it makes runs repeatable.
        shard_id: This process's part of the data (its global rank).
        num_shards: Number of parts (the world size).
        dtype: ``torch.float32`` or ``torch.float16`` images.
        crop_ratio: Evaluation center-crop ratio (the crop is ``size``, taken from ``size / crop_ratio``).
        random_area: Training crop area range, as a fraction of the image (torchvision's ``scale``).
        random_aspect_ratio: Training crop aspect-ratio range, width / height (torchvision's ``ratio``).
        prefetch_queue_depth: Batches DALI prepares ahead.
        return_index: Also yield each sample's index in the source (``(images, labels, indices)``).
        index_dir: Where missing WebDataset index files are built (default: the user cache).

    Every epoch (with ``drop_last=False``) yields every sample of this shard exactly once: the last batch
    is smaller rather than padded. ``len(loader)`` is the exact number of batches.

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
        shard_id: int = 0,
        num_shards: int = 1,
        dtype: torch.dtype = torch.float32,
        crop_ratio: float = 0.875,
        random_area: tuple[float, float] = (0.08, 1.0),
        random_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        prefetch_queue_depth: int = 2,
        return_index: bool = False,
        index_dir: str | os.PathLike | None = None,
    ) -> None:
        from dali_resizer.resizer import _to_size

        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        try:
            self.size = _to_size(size)
        except TypeError as e:
            raise ValueError(str(e)) from None
        if num_threads is None:
            num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
        if not isinstance(shard_id, int) or not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id!r}")
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype!r}")
        if not 0 < crop_ratio <= 1:
            raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio!r}")
        if not 0 < random_area[0] <= random_area[1] <= 1:
            raise ValueError(f"random_area must be (low, high) with 0 < low <= high <= 1, got {random_area!r}")
        if not 0 < random_aspect_ratio[0] <= random_aspect_ratio[1]:
            raise ValueError(f"random_aspect_ratio must be (low, high) with 0 < low <= high, got {random_aspect_ratio!r}")

        self.batch_size = batch_size
        self.train = bool(train)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.drop_last = bool(drop_last)
        self.num_threads = num_threads
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.dtype = dtype
        self.crop_ratio = float(crop_ratio)
        self.random_area = (float(random_area[0]), float(random_area[1]))
        self.random_aspect_ratio = (float(random_aspect_ratio[0]), float(random_aspect_ratio[1]))
        self.prefetch_queue_depth = int(prefetch_queue_depth)
        self.return_index = bool(return_index)
        self.source = open_source(source, index_dir)
        self._epoch = 0
        self._finished = None  # an evaluation iterator that ran to its end, to rewind
        if isinstance(self.source, ImageFolderSource):
            self._targets = torch.from_numpy(self.source.targets)

    # -- DataLoader surface -------------------------------------------------------------------------

    @property
    def classes(self) -> list[str] | None:
        return self.source.classes

    @property
    def class_to_idx(self) -> dict[str, int] | None:
        return self.source.class_to_idx

    @property
    def num_samples(self) -> int:
        """Samples this shard yields per epoch (before ``drop_last``)."""
        total = len(self.source)
        return total * (self.shard_id + 1) // self.num_shards - total * self.shard_id // self.num_shards

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that the next iteration runs: its order and augmentations depend on
        ``(seed, epoch)`` only. Without calls, each iteration advances the epoch by one."""
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch = self._epoch
        self._epoch += 1
        if len(self) == 0:
            return iter(())
        return self._iterate(epoch)

    def __repr__(self) -> str:
        kind = "ImageFolder" if isinstance(self.source, ImageFolderSource) else f"{len(self.source.paths)} shards"
        return (
            f"{type(self).__name__}({kind}, samples={len(self.source)}, batch_size={self.batch_size}, "
            f"size={self.size}, train={self.train}, shuffle={self.shuffle}, device={self.device}, "
            f"shard={self.shard_id}/{self.num_shards})"
        )

    # -- DALI ---------------------------------------------------------------------------------------

    def _iterate(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        # Evaluation without shuffling is the same pass every epoch: keep its pipeline (and its threads,
        # decoder state and buffers) and rewind it, when the last pass ran to the end.
        reusable = not self.train and not self.shuffle
        batches, self._finished = (self._finished if reusable else None), None
        if batches is not None:
            batches.reset()
        else:
            batches = self._make_iterator(epoch)
        for (out,) in batches:
            labels, indices = self._labels(out["targets"])
            yield (out["images"], labels, indices) if self.return_index else (out["images"], labels)
        if reusable:
            self._finished = batches

    def _make_iterator(self, epoch: int):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        pipe = self._build_pipeline(epoch)
        return DALIGenericIterator([pipe], ["images", "targets"], reader_name="Reader", last_batch_policy=policy)

    def _labels(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels (and sample indices) on ``self.device`` from the reader's CPU output."""
        if isinstance(self.source, ImageFolderSource):
            indices = raw.view(-1).to(torch.int64)
            labels = self._targets[indices]
        else:
            indices = None
            labels = parse_ascii_labels(raw)
        labels = labels.to(self.device, non_blocking=True)
        if indices is not None:
            indices = indices.to(self.device, non_blocking=True)
        return labels, indices

    def _build_pipeline(self, epoch: int):
        from nvidia.dali import types

        import pipelines

        device_id = None if self.device.type == "cpu" else self.device.index
        common = dict(
            size=self.size,
            train=self.train,
            decoder=pipelines.decoder_device(device_id),
            dtype=types.FLOAT16 if self.dtype == torch.float16 else types.FLOAT,
            crop_ratio=self.crop_ratio,
            random_area=self.random_area,
            random_aspect_ratio=self.random_aspect_ratio,
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=device_id,
            seed=_pipeline_seed(self.seed, epoch, self.shard_id),
            prefetch_queue_depth=self.prefetch_queue_depth,
        )
        order_rng = np.random.default_rng([self.seed, epoch])  # identical on every shard
        if isinstance(self.source, ImageFolderSource):
            total = len(self.source)
            order = order_rng.permutation(total) if self.shuffle else np.arange(total)
            # Shard the epoch's global order ourselves: every rank sees the same permutation.
            start = total * self.shard_id // self.num_shards
            stop = total * (self.shard_id + 1) // self.num_shards
            mine = order[start:stop]
            files = [self.source.files[i] for i in mine]
            pipe = pipelines.image_folder_pipeline(files, mine.tolist(), **common)
        else:
            source: ShardSource = self.source
            order = order_rng.permutation(len(source.paths)) if self.shuffle else np.arange(len(source.paths))
            pipe = pipelines.webdataset_pipeline(
                [source.paths[i] for i in order],
                [source.index_paths[i] for i in order],
                shard_id=self.shard_id,
                num_shards=self.num_shards,
                random_shuffle=self.shuffle,
                **common,
            )
        pipe.build()
        return pipe
