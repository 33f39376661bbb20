"""``DALILoader``: a drop-in for ``torch.utils.data.DataLoader`` that reads, decodes and augments with DALI."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from dali_resizer.sources import ImageFolderSource, ShardSource, open_source

__all__ = ["MAX_PIXELS", "PAD_LABEL", "BadSampleError", "DALILoader", "distributed_rank_and_world", "parse_ascii_labels", "resolve_device"]

PAD_LABEL = -100  # label of padding samples: CrossEntropyLoss's default ignore_index
# PIL's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS), ~537 MB decoded; the same default as
# pipelines.MAX_PIXELS, written twice so that importing this module needs no DALI (a test holds them equal).
MAX_PIXELS = 178_956_970


class BadSampleError(ValueError):
    """A sample that cannot be read or decoded; the message names the file (or the shards) and why."""


def distributed_rank_and_world() -> tuple[int, int]:
    """(global rank, world size) from an initialised ``torch.distributed``, else from torchrun's
    ``RANK`` / ``WORLD_SIZE``, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(device: torch.device | str | int | None) -> torch.device:
    """``None`` picks this process's CUDA device when there is one (``LOCAL_RANK`` under torchrun, else
    the current device), else the CPU; a request for a GPU that is not there is an error, not a silent
    fallback."""
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local_rank = os.environ.get("LOCAL_RANK")  # set by torchrun: one GPU per process
        return torch.device("cuda", int(local_rank) if local_rank is not None else torch.cuda.current_device())
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
        shard_id: This process's part of the data; default: its global rank (``torch.distributed`` when
            initialised, else torchrun's ``RANK``), 0 outside a distributed job.
        num_shards: Number of parts; default: the world size (``WORLD_SIZE``), 1 outside one.
        dtype: ``torch.float32`` or ``torch.float16`` images.
        crop_ratio: Evaluation center-crop ratio (the crop is ``size``, taken from ``size / crop_ratio``).
        random_area: Training crop area range, as a fraction of the image (torchvision's ``scale``).
        random_aspect_ratio: Training crop aspect-ratio range, width / height (torchvision's ``ratio``).
        prefetch_queue_depth: Batches DALI prepares ahead.
        return_index: Also yield each sample's index in the source (``(images, labels, indices)``).
        index_dir: Where missing WebDataset index files are built (default: the user cache).
        on_error: ``"raise"``: a file that cannot be read or decoded stops the iteration with a
            :class:`BadSampleError` naming it and the problem. ``"skip"`` (image folders): it is
            recorded in ``loader.skipped`` (path -> problem), a warning names it, and its place in the
            batch is taken by a padding sample (label ``PAD_LABEL``), so every good sample still comes
            exactly once, labels never shift and every rank keeps the same number of batches.
        max_pixels: Images with more pixels (read from the file header) are never decoded: they are
            bad samples, handled as ``on_error`` says. The default is PIL's decompression-bomb limit
            (about 179 million pixels, 537 MB decoded); ``None`` removes the limit.

    Every shard yields the same number of batches per epoch (``len(loader)``, exact), so DDP never waits
    on a rank that ran out. With ``drop_last=False`` one epoch yields every sample of the source exactly
    once across the shards; shards that hold one sample less than the largest get one padding sample
    (a copy of their last one) whose label is ``PAD_LABEL`` (-100, ignored by ``CrossEntropyLoss``) and
    whose index is -1, so evaluation counts every sample once. With ``drop_last=True`` every shard
    stops after the same number of full batches. ``state_dict()`` / ``load_state_dict()`` resume an
    epoch at the batch where it stopped, with the same samples and augmentations (DALI checkpointing).

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
        crop_ratio: float = 0.875,
        random_area: tuple[float, float] = (0.08, 1.0),
        random_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        prefetch_queue_depth: int = 2,
        return_index: bool = False,
        index_dir: str | os.PathLike | None = None,
        on_error: str = "raise",
        max_pixels: int | None = MAX_PIXELS,
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
        if shard_id is None or num_shards is None:
            rank, world = distributed_rank_and_world()
            shard_id = rank if shard_id is None else shard_id
            num_shards = world if num_shards is None else num_shards
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
        if not isinstance(shard_id, int) or not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
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
        if on_error == "skip" and not isinstance(self.source, ImageFolderSource):
            raise ValueError("on_error='skip' works on image folders; for shards, find bad samples first with "
                             "`python -m dali_resizer.check DIR` and rewrite the shards without them")
        self.on_error = on_error
        self.max_pixels = max_pixels
        self.skipped: dict[str, str] = {}
        self._epoch = 0
        self._finished = None  # an evaluation iterator that ran to its end, to rewind
        self._active = None  # (epoch, DALI iterator, batches yielded) of the epoch in progress
        self._resume: dict | None = None
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
        """Real samples in this shard per epoch (before ``drop_last``, without padding)."""
        total = len(self.source)
        return total * (self.shard_id + 1) // self.num_shards - total * self.shard_id // self.num_shards

    @property
    def samples_per_shard(self) -> int:
        """What every shard delivers per epoch: the largest shard's size (padded up to it) without
        ``drop_last``, the smallest's with it."""
        total = len(self.source)
        return -(-total // self.num_shards) if not self.drop_last else total // self.num_shards

    def __len__(self) -> int:
        if self.drop_last:
            return self.samples_per_shard // self.batch_size
        return math.ceil(self.samples_per_shard / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that the next iteration runs: its order and augmentations depend on
        ``(seed, epoch)`` only. Without calls, each iteration advances the epoch by one."""
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch = self._epoch
        self._epoch += 1
        resume, self._resume = self._resume, None
        if len(self) == 0:
            return iter(())
        return self._iterate(epoch, resume if resume and resume["epoch"] == epoch else None)

    def state_dict(self) -> dict:
        """Where the loader stands: the epoch in progress and how far it got, with DALI's checkpoint of
        its readers and random generators, or the next epoch when none is in progress."""
        state = {"epoch": self._epoch, "batches_done": 0, "base": 0, "dali": None, "seed": self.seed,
                 "num_shards": self.num_shards, "shard_id": self.shard_id, "num_source_samples": len(self.source),
                 "skipped": dict(self.skipped)}
        if self._active is not None:
            epoch, batches, done, base = self._active
            state |= {"epoch": epoch, "batches_done": done, "base": base}
            if batches is not None:
                state["dali"] = batches.checkpoints()[0]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continues from :meth:`state_dict`: the next iteration resumes that epoch after its last
        delivered batch, yielding what an uninterrupted run would have yielded."""
        for key, mine in (("seed", self.seed), ("num_shards", self.num_shards), ("shard_id", self.shard_id),
                          ("num_source_samples", len(self.source))):
            if state.get(key) != mine:
                raise ValueError(f"loader state is for {key}={state.get(key)!r}, this loader has {key}={mine!r}")
        self._epoch = int(state["epoch"])
        self.skipped.update(state.get("skipped", {}))
        self._resume = state if state["batches_done"] else None

    def __repr__(self) -> str:
        kind = "ImageFolder" if isinstance(self.source, ImageFolderSource) else f"{len(self.source.paths)} shards"
        return (
            f"{type(self).__name__}({kind}, samples={len(self.source)}, batch_size={self.batch_size}, "
            f"size={self.size}, train={self.train}, shuffle={self.shuffle}, device={self.device}, "
            f"shard={self.shard_id}/{self.num_shards})"
        )

    # -- DALI ---------------------------------------------------------------------------------------

    def _iterate(self, epoch: int, resume: dict | None) -> Iterator[tuple[torch.Tensor, ...]]:
        done = resume["batches_done"] if resume else 0
        base = resume.get("base", 0) if resume else 0  # batch at which the current pipeline's list starts
        real_batches = self.num_samples // self.batch_size if self.drop_last else -(-self.num_samples // self.batch_size)
        padding = 0 if self.drop_last else self.samples_per_shard - self.num_samples  # 0 or 1 sample
        # Evaluation without shuffling is the same pass every epoch: keep its pipeline (and its threads,
        # decoder state and buffers) and rewind it, when the last pass ran to the end.
        reusable = not self.train and not self.shuffle and resume is None
        batches, self._finished = (self._finished if reusable else None), None
        build = batches is None and done < real_batches  # (done >= real_batches: only padding was left)
        checkpoint = resume["dali"] if resume else None
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
                    labels, indices = self._labels(out["targets"])
                    oversize = out["oversize"].view(-1)
                    if bool(oversize.any()):
                        labels, indices = self._on_oversize(out["targets"], oversize, labels, indices)
                    if padding and done == real_batches - 1 and images.shape[0] < self.batch_size:
                        images, labels, indices = self._pad(images, labels, indices, images[-1:], padding)
                        padding = 0
                    last = images[-1:]
                    done += 1
                    self._active = (epoch, batches, done, base)
                    yield (images, labels, indices) if self.return_index else (images, labels)
                break
            except RuntimeError as error:  # DALI stopped: find the file, then raise or skip it
                if "pipeline" not in str(error).lower():
                    raise
                self._on_bad_sample(epoch, done, error)
                base, build, batches = done, True, None  # the rest of the epoch, without the bad file
        if padding and done < len(self):  # this shard's samples ended on a full batch: one of padding
            empty = torch.empty(0, dtype=torch.int64, device=self.device)
            if last is None:
                last = torch.zeros((1, 3, *self.size), dtype=self.dtype, device=self.device)
            images, labels, indices = self._pad(last[:0], empty, empty, last, padding)
            done += 1
            self._active = (epoch, None, done, base)
            yield (images, labels, indices) if self.return_index else (images, labels)
        self._active = None  # finished; an abandoned epoch keeps its state for state_dict()
        if reusable and base == 0:  # (a pipeline rebuilt mid-epoch around a bad file covers only the rest)
            self._finished = batches

    def _on_oversize(self, raw: torch.Tensor, oversize: torch.Tensor, labels, indices):
        """Images over ``max_pixels`` (placeholders in the batch): raise naming them, or mark them as
        padding and count them as skipped."""
        limit = f"over max_pixels={self.max_pixels:,} (not decoded; pass a larger max_pixels to read it)"
        if not isinstance(self.source, ImageFolderSource):
            raise BadSampleError(f"an image of {len(self.source.paths)} shard(s) ({self.source.paths[0]} ...) is {limit}")
        ids = raw.view(-1).to(torch.int64)[oversize]
        paths = [self.source.files[i % len(self.source)] for i in ids.tolist()]
        if self.on_error == "raise":
            raise BadSampleError(f"{paths[0]}: image {limit}")
        for path in paths:
            self.skipped[path] = f"image {limit}"
        warnings.warn(f"skipped {len(paths)} image(s) {limit}: {', '.join(paths[:3])}", stacklevel=4)
        mask = oversize.to(labels.device)
        labels = labels.masked_fill(mask, PAD_LABEL)
        if indices is not None:
            indices = indices.masked_fill(mask, -1)
        return labels, indices

    def _on_bad_sample(self, epoch: int, done: int, error: RuntimeError) -> None:
        """Names the file(s) that stopped DALI among the batches it was preparing; raises, or records
        them as skipped (``on_error="skip"``)."""
        detail = next((line.strip() for line in reversed(str(error).splitlines())
                       if line.strip() and "pipeline" not in line.lower()), "decode failed")
        if not isinstance(self.source, ImageFolderSource):
            raise BadSampleError(f"a sample of {len(self.source.paths)} shard(s) ({self.source.paths[0]} ...) could "
                                 f"not be read or decoded: {detail}; `python -m dali_resizer.check` finds it") from error
        from pipelines.probe import probe_files

        files, _ = self._epoch_samples(epoch)
        window = files[done * self.batch_size : (done + self.prefetch_queue_depth + 2) * self.batch_size]
        bad = probe_files(dict.fromkeys(f for f in window if f not in self.skipped))
        if not bad:
            raise BadSampleError(f"DALI failed on a batch of {window[0]} ... (no single file fails alone): "
                                 f"{detail}") from error
        if self.on_error == "raise":
            path, problem = next(iter(bad.items()))
            raise BadSampleError(f"{path}: {problem}") from None
        self.skipped.update(bad)
        shown = ", ".join(f"{path} ({problem})" for path, problem in list(bad.items())[:3])
        warnings.warn(f"skipped {len(bad)} bad file(s), {len(self.skipped)} so far: {shown}", stacklevel=4)

    def _pad(self, images, labels, indices, sample, count: int):
        """Appends ``count`` copies of ``sample`` marked as padding (label ``PAD_LABEL``, index -1)."""
        images = torch.cat([images, sample.expand(count, *sample.shape[1:])])
        labels = torch.cat([labels, torch.full((count,), PAD_LABEL, dtype=torch.int64, device=self.device)])
        if indices is not None:
            indices = torch.cat([indices, torch.full((count,), -1, dtype=torch.int64, device=self.device)])
        return images, labels, indices

    def _make_iterator(self, epoch: int, checkpoint: bytes | None = None, base: int = 0):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        pipe = self._build_pipeline(epoch, checkpoint, base * self.batch_size)
        # prepare_first_batch=False: the first batch runs on the first next(), where a bad file is handled
        return DALIGenericIterator([pipe], ["images", "targets", "oversize"], reader_name="Reader",
                                   last_batch_policy=policy, prepare_first_batch=False)

    def _labels(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels (and sample indices) on ``self.device`` from the reader's CPU output."""
        if isinstance(self.source, ImageFolderSource):
            indices = raw.view(-1).to(torch.int64)
            stand_in = indices >= len(self.source)  # a skipped file's place, filled by a good one
            labels = self._targets[indices % len(self.source)]
            labels[stand_in] = PAD_LABEL
            indices[stand_in] = -1
        else:
            indices = None
            try:
                labels = parse_ascii_labels(raw)
            except ValueError as e:
                raise BadSampleError(f"{e}, in one of {len(self.source.paths)} shard(s) ({self.source.paths[0]} ...); "
                                     "`python -m dali_resizer.check` names the sample") from None
            if self.source.classes is not None and bool((labels >= len(self.source.classes)).any()):
                raise BadSampleError(f"label {int(labels.max())} is out of range for the {len(self.source.classes)} "
                                     f"classes of {self.source.paths[0]} ...; `python -m dali_resizer.check` names the sample")
        labels = labels.to(self.device, non_blocking=True)
        if indices is not None:
            indices = indices.to(self.device, non_blocking=True)
        return labels, indices

    def _epoch_samples(self, epoch: int) -> tuple[list[str], np.ndarray]:
        """This shard's files and sample ids for ``epoch``, skipped files replaced by stand-ins."""
        total = len(self.source)
        order = np.random.default_rng([self.seed, epoch]).permutation(total) if self.shuffle else np.arange(total)
        # Shard the epoch's global order ourselves: every rank sees the same permutation.
        mine = order[total * self.shard_id // self.num_shards : total * (self.shard_id + 1) // self.num_shards]
        files = [self.source.files[i] for i in mine]
        if self.skipped:
            good = next((f for f in files if f not in self.skipped), None) or next(
                f for f in self.source.files if f not in self.skipped)
            for k, path in enumerate(files):
                if path in self.skipped:
                    files[k], mine[k] = good, mine[k] + total  # ids >= total read as padding
        return files, mine

    def _build_pipeline(self, epoch: int, checkpoint: bytes | None = None, start: int = 0):
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
            max_pixels=min(self.max_pixels or 2**31 - 1, 2**31 - 1),  # (a DALI constant: int32)
            enable_checkpointing=True,
            checkpoint=checkpoint,
        )
        if isinstance(self.source, ImageFolderSource):
            files, ids = self._epoch_samples(epoch)
            pipe = pipelines.image_folder_pipeline(files[start:], ids[start:].tolist(), **common)
        else:
            source: ShardSource = self.source
            order_rng = np.random.default_rng([self.seed, epoch])  # identical on every shard
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
