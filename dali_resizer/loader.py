"""``DALILoader``: a drop-in for ``torch.utils.data.DataLoader`` that reads, decodes and augments with DALI."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from dali_resizer.sources import (
    ImageFolderSource,
    ShardSource,
    default_index_dir,
    open_source,
    read_tar_member,
    sample_key,
    standin_index,
)

__all__ = ["MAX_PIXELS", "PAD_LABEL", "BadSampleError", "DALILoader", "distributed_rank_and_world",
           "parse_ascii_labels", "resolve_device"]

PAD_LABEL = -100  # label of padding samples: CrossEntropyLoss's default ignore_index
# PIL's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS), ~537 MB decoded; the same default as
# pipelines.MAX_PIXELS, written twice so that importing this module needs no DALI (a test holds them equal).
MAX_PIXELS = 178_956_970
# pipelines' per-sample status (pipelines.STATUS_*), repeated for the same reason
_STATUS_OVERSIZE, _STATUS_NOT_AN_IMAGE = 1, 2
_DALI_NAMES_SAMPLE = re.compile(r"Failed to decode sample #\d+ : (.+)$", re.MULTILINE)


class BadSampleError(ValueError):
    """A sample that cannot be read, decoded or labelled; the message names the file (or the shard and
    the sample's key) and why."""


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
    """``(N, L)`` uint8 rows of ASCII digits (WebDataset ``.cls``), zero/whitespace padded, to int64 ``(N,)``;
    a row that is not a non-negative integer is an error."""
    value, valid = _ascii_labels(raw)
    if not bool(valid.all()):
        row = raw[(~valid).nonzero()[0, 0]]
        raise ValueError(f"WebDataset label (.cls) is not a non-negative integer: {bytes(row[row != 0].tolist())!r}")
    return value


def _ascii_labels(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, valid) of ``(N, L)`` rows of ASCII digits; an invalid row's value is meaningless."""
    is_digit = (raw >= ord("0")) & (raw <= ord("9"))
    is_blank = (raw == 0) | (raw == ord(" ")) | (raw == ord("\n")) | (raw == ord("\r")) | (raw == ord("\t"))
    valid = (is_digit | is_blank).all(dim=1) & is_digit.any(dim=1) & (raw.shape[1] <= 18)  # (int64 range)
    digits = (raw.to(torch.int64) - ord("0")).clamp_(0, 9)
    value = torch.zeros(raw.shape[0], dtype=torch.int64)
    for column in range(raw.shape[1]):
        value = torch.where(is_digit[:, column], value * 10 + digits[:, column], value)
    return value, valid


def _row_texts(raw: torch.Tensor) -> list[str]:
    """Zero-padded uint8 rows (DALI's source names, labels) to strings."""
    return [bytes(row[row != 0].tolist()).decode("utf-8", "surrogateescape") for row in raw.cpu()]


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
            raise ValueError(
                f"random_aspect_ratio must be (low, high) with 0 < low <= high, got {random_aspect_ratio!r}")

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
        self._index_dir = Path(index_dir) if index_dir is not None else default_index_dir()
        self.on_error = on_error
        self.max_pixels = max_pixels
        self.skipped: dict[str, str] = {}
        self._bad_keys: dict[str, set[str]] = {}  # shard -> keys of its skipped samples (read as stand-ins)
        self._epoch = 0
        self._finished = None  # an evaluation iterator that ran to its end, to rewind
        self._active = None  # (epoch, DALI iterator, batches yielded) of the epoch in progress
        self._resume: dict | None = None
        if isinstance(self.source, ImageFolderSource):
            self._targets = torch.from_numpy(self.source.targets)
        elif self.source.duplicates:
            self._found({f"{tar} (member {member})": "duplicate key: an earlier member of the tar has the same key "
                         "and extension; this copy is left out of the index" for tar, members in
                         self.source.duplicates.items() for member in members}, stacklevel=3)

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
                 "skipped": dict(self.skipped), "bad_keys": {tar: sorted(keys) for tar, keys in self._bad_keys.items()}}
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
        for tar, keys in state.get("bad_keys", {}).items():
            self._bad_keys.setdefault(tar, set()).update(keys)
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
                    labels, indices = self._labels(out)
                    if padding and done == real_batches - 1 and images.shape[0] < self.batch_size:
                        images, labels, indices = self._pad(images, labels, indices, images[-1:], padding)
                        padding = 0
                    last = images[-1:]
                    done += 1
                    self._active = (epoch, batches, done, base)
                    yield (images, labels, indices) if self.return_index else (images, labels)
                break
            except RuntimeError as error:  # DALI stopped: name the sample, then raise or skip it
                if "pipeline" not in str(error).lower():
                    raise
                checkpoint = self._on_pipeline_error(epoch, done, error, batches)
                if isinstance(self.source, ImageFolderSource):
                    base = done  # the rest of the epoch's list, the bad file replaced by a stand-in
                build, batches, rebuilt = True, None, True
        if padding and done < len(self):  # this shard's samples ended on a full batch: one of padding
            empty = torch.empty(0, dtype=torch.int64, device=self.device)
            if last is None:
                last = torch.zeros((1, 3, *self.size), dtype=self.dtype, device=self.device)
            images, labels, indices = self._pad(last[:0], empty, empty, last, padding)
            done += 1
            self._active = (epoch, None, done, base)
            yield (images, labels, indices) if self.return_index else (images, labels)
        self._active = None  # finished; an abandoned epoch keeps its state for state_dict()
        if reusable and not rebuilt:  # (a pipeline rebuilt mid-epoch may cover only the rest)
            self._finished = batches

    # -- bad samples --------------------------------------------------------------------------------

    def _found(self, bad: dict[str, str], stacklevel: int = 5) -> None:
        """Bad samples (name -> problem): raises naming the first (``on_error="raise"``), or records
        them in ``skipped`` and warns."""
        if self.on_error == "raise":
            name, problem = next(iter(bad.items()))
            raise BadSampleError(f"{name}: {problem}")
        new = {name: problem for name, problem in bad.items() if name not in self.skipped}
        self.skipped.update(bad)
        if new:
            shown = "; ".join(f"{name} ({problem})" for name, problem in list(new.items())[:3])
            warnings.warn(f"skipped {len(new)} bad sample(s), {len(self.skipped)} so far: {shown}",
                          stacklevel=stacklevel)

    def _oversize_problem(self) -> str:
        return f"image over max_pixels={self.max_pixels:,} (not decoded; pass a larger max_pixels to read it)"

    def _row_problems(self, status: torch.Tensor, files: list[str | None]) -> dict[int, str]:
        """Problems of the rows the pipeline did not decode (``status``), from their files (folders)."""
        from pipelines.probe import describe_bytes

        problems = {}
        for row in status.nonzero().view(-1).tolist():
            if int(status[row]) == _STATUS_OVERSIZE:
                problems[row] = self._oversize_problem()
            elif files[row] is not None:
                with open(files[row], "rb") as f:
                    problems[row] = f"{describe_bytes(f.read(4096))} (not decoded)"  # (no known signature)
        return problems

    def _labels(self, out: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels (and sample indices) of a batch on ``self.device``: bad samples the pipeline reported
        are raised or marked as padding, and so are the stand-ins of samples skipped before."""
        status = out["status"].view(-1)
        if isinstance(self.source, ImageFolderSource):
            indices = out["targets"].view(-1).to(torch.int64)
            padding = indices >= len(self.source)  # a skipped file's place, filled by a good one
            labels = self._targets[indices % len(self.source)]
            if bool(status.any()):
                files = [None if pad else self.source.files[i] for i, pad in zip(indices.tolist(), padding.tolist())]
                problems = self._row_problems(status, files)
                if problems:
                    self._found({files[row]: problem for row, problem in problems.items()})
                    padding[list(problems)] = True
            labels[padding] = PAD_LABEL
            indices[padding] = -1
        else:
            indices = None
            labels, padding = self._shard_labels(out, status)
            labels[padding] = PAD_LABEL
        labels = labels.to(self.device, non_blocking=True)
        if indices is not None:
            indices = indices.to(self.device, non_blocking=True)
        return labels, indices

    def _shard_labels(self, out: dict, status: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels of a batch of shard samples and the rows to mark as padding (stand-ins, bad samples)."""
        from pipelines.probe import describe_bytes

        labels, valid = _ascii_labels(out["targets"])
        classes = len(self.source.classes) if self.source.classes is not None else None
        if classes is not None:
            valid &= labels < classes
        padding = torch.zeros_like(valid)
        if bool(valid.all()) and not bool(status.any()) and not self._bad_keys:
            return labels, padding
        image_names, label_names = _row_texts(out["image_name"]), _row_texts(out["label_name"])
        texts = _row_texts(out["targets"])
        bad, keys = {}, []
        for row, (image_name, label_name) in enumerate(zip(image_names, label_names)):
            has_image, has_label = bool(image_name), bool(label_name)
            tar, offset, member = (image_name or label_name).rsplit(":", 2)
            key = sample_key(member)
            if key in self._bad_keys.get(tar, ()):
                padding[row] = True  # a stand-in for a sample skipped before
                continue
            if int(status[row]) == _STATUS_OVERSIZE:
                problem = self._oversize_problem()
            elif int(status[row]) == _STATUS_NOT_AN_IMAGE:
                problem = (f"{describe_bytes(read_tar_member(tar, int(offset))[1])} (not decoded)" if has_image
                           else "no image (.jpg/.jpeg/.png/.webp) in the sample")
            elif not has_label:
                problem = "no label (.cls) in the sample"
            elif not texts[row].strip().isdigit():
                problem = f"label {texts[row]!r} is not a non-negative integer"
            elif not bool(valid[row]):
                problem = f"label {int(texts[row])} is out of range for the {classes} classes of classes.txt"
            else:
                continue
            bad[f"{tar} (sample {key})"] = problem
            keys.append((tar, key))
            padding[row] = True
        if bad:
            self._found(bad)
            for tar, key in keys:
                self._bad_keys.setdefault(tar, set()).add(key)
        return labels, padding

    def _on_pipeline_error(self, epoch: int, done: int, error: RuntimeError, batches) -> bytes | None:
        """Names the sample(s) that stopped DALI: from DALI's message when it names one, else by decoding
        alone each sample of the batches DALI was preparing. Raises, or records them as skipped
        (``on_error="skip"``) and returns the checkpoint to rebuild the pipeline from (shards)."""
        from pipelines.probe import describe_bytes, probe_files, probe_samples

        text = str(error)
        detail = next((line.strip() for line in reversed(text.splitlines())
                       if line.strip() and "pipeline" not in line.lower()), "decode failed")
        named = _DALI_NAMES_SAMPLE.search(text)
        if named:  # (the sample's name is said once, in front)
            detail = detail.replace(f" : {named.group(1).strip()}", "")
        folder = isinstance(self.source, ImageFolderSource)
        checkpoint = None if folder or batches is None else batches.checkpoints()[0]
        bad: dict[str, str] = {}
        keys: list[tuple[str, str]] = []
        if folder:
            if named and os.path.isfile(named.group(1).strip()):
                path = named.group(1).strip()
                bad[path] = f"{describe_bytes(Path(path).read_bytes())}; DALI: {detail}"
            else:
                files, _ = self._epoch_samples(epoch)
                window = files[done * self.batch_size : (done + self.prefetch_queue_depth + 2) * self.batch_size]
                bad = probe_files(dict.fromkeys(f for f in window if f not in self.skipped))
            repeated = [path for path in bad if path in self.skipped]
        else:
            if named:
                candidates = [named.group(1).strip()]
            elif checkpoint is not None:
                candidates = self._replay(epoch, checkpoint, min(self.prefetch_queue_depth + 2, len(self) - done))
            else:
                candidates = []
            members = {}  # source name -> (the tar header's member name, bytes)
            for name in dict.fromkeys(candidates):
                tar, offset, _ = name.rsplit(":", 2)
                members[name] = read_tar_member(tar, int(offset))
            if named:
                problems = {name: f"{describe_bytes(data)}; DALI: {detail}" for name, (_, data) in members.items()}
            else:
                problems = probe_samples((name, data) for name, (_, data) in members.items())
            for name, problem in problems.items():
                tar, _, member = name.rsplit(":", 2)
                key = sample_key(member)
                if key in self._bad_keys.get(tar, ()):  # a stand-in's image: the donor sample is bad
                    key = sample_key(members[name][0])
                bad[f"{tar} (sample {key})"] = problem
                keys.append((tar, key))
            repeated = [name for name, (tar, key) in zip(bad, keys) if key in self._bad_keys.get(tar, ())]
        if not bad:
            where = self.source.paths[0] if not folder else "the batch"
            raise BadSampleError(f"DALI failed on a batch of {where} ... and no single sample fails alone: "
                                 f"{detail}") from error
        if repeated:
            raise BadSampleError(f"{repeated[0]}: still fails after it was skipped; DALI: {detail}") from error
        if self.on_error == "raise":
            name, problem = next(iter(bad.items()))
            raise BadSampleError(f"{name}: {problem}") from None
        self._found(bad, stacklevel=6)
        for tar, key in keys:
            self._bad_keys.setdefault(tar, set()).add(key)
        return checkpoint

    def _replay(self, epoch: int, checkpoint: bytes, count: int) -> list[str]:
        """The names of the samples in the next ``count`` batches after ``checkpoint``, read again by a
        pipeline that decodes nothing (shards)."""
        pipe = self._build_pipeline(epoch, checkpoint, replay=True)
        names = []
        for _ in range(max(count, 1)):
            image_names = pipe.run()[3]  # (the outputs of webdataset_pipeline)
            names += [text for text in _row_texts(torch.from_numpy(np.array(image_names.as_tensor()))) if text]
        return names

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
        names = ["images", "targets", "status"]
        if not isinstance(self.source, ImageFolderSource):
            names += ["image_name", "label_name"]
        # prepare_first_batch=False: the first batch runs on the first next(), where a bad file is handled
        return DALIGenericIterator([pipe], names, reader_name="Reader", last_batch_policy=policy,
                                   prepare_first_batch=False)

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

    def _build_pipeline(self, epoch: int, checkpoint: bytes | None = None, start: int = 0, replay: bool = False):
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
            replay=replay,
        )
        if isinstance(self.source, ImageFolderSource):
            files, ids = self._epoch_samples(epoch)
            pipe = pipelines.image_folder_pipeline(files[start:], ids[start:].tolist(), **common)
        else:
            source: ShardSource = self.source
            order_rng = np.random.default_rng([self.seed, epoch])  # identical on every shard
            order = order_rng.permutation(len(source.paths)) if self.shuffle else np.arange(len(source.paths))
            index_paths = [
                standin_index(source.index_paths[i], self._bad_keys[source.paths[i]], self._index_dir / "standin")
                if self._bad_keys.get(source.paths[i]) else source.index_paths[i]
                for i in order
            ]
            pipe = pipelines.webdataset_pipeline(
                [source.paths[i] for i in order],
                index_paths,
                shard_id=self.shard_id,
                num_shards=self.num_shards,
                random_shuffle=self.shuffle,
                **common,
            )
        pipe.build()
        return pipe
