"""One pass over a :class:`~dali_resizer.loader.DALILoader`: what ``iter(loader)`` returns.

The iterator owns its DALI pipeline and its :class:`Position` in the epoch, as ``DataLoader``'s
``_BaseDataLoaderIter`` owns its workers and its sampler iterator. It claims its epoch from
``loader.sampler`` on its first ``next()`` (``iter()`` alone builds and changes nothing), and its
position moves in one assignment, after a batch is complete and before it is returned: an exception
anywhere in ``next()`` (a bad sample, the storage, a ``KeyboardInterrupt`` while DALI hands a batch
over) leaves the position of the last batch returned, so ``loader.state_dict()`` resumes with every
sample exactly once, and the same iterator, called again, rebuilds its pipeline there.
"""

from __future__ import annotations

import gc
import signal
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from dali_resizer.sampler import Epoch, ids_of, runs_of, union_of_runs
from dali_resizer.samples import BadSampleError, DaliFailure, classify_failure

if TYPE_CHECKING:
    from dali_resizer.loader import DALILoader

__all__ = ["DALILoaderIter", "Position"]

@dataclass(frozen=True)
class Position:
    """Where an iterator stands in its epoch: ``done`` batches returned; DALI's ``checkpoint`` of the
    pipeline at that point, whose list starts at the epoch's batch ``base``; ``delivered``: the ids of
    the samples returned (one array per batch)."""

    epoch: Epoch
    done: int = 0
    base: int = 0
    checkpoint: bytes | None = None
    delivered: tuple[np.ndarray, ...] = ()

    def delivered_runs(self) -> np.ndarray:
        """The samples of the epoch delivered so far, by this rank or before this world took the
        epoch over: sorted, disjoint ``[start, stop)`` runs of sample ids."""
        mine = runs_of(np.concatenate(self.delivered)) if self.delivered else np.zeros((0, 2), dtype=np.int64)
        return union_of_runs(mine, self.epoch.carried.runs) if self.epoch.carried is not None else mine


class DALILoaderIter:
    """An epoch of a :class:`~dali_resizer.loader.DALILoader`, batch by batch (see the module's docstring).

    Several iterators of one loader are independent, as ``DataLoader``'s are: each claims its own epoch
    and reads it with its own pipeline. ``loader.state_dict()`` is the position of the one started last.
    """

    def __init__(self, loader: DALILoader) -> None:
        self._loader = loader
        self._reader = loader._reader
        self._position: Position | None = None
        self._length: int | None = None
        self._dali = None  # DALI's PyTorch iterator over the current pipeline
        self._reusable = False  # an evaluation pass from its start: its pipeline serves the next pass
        self._last: torch.Tensor | None = None  # the last real image, copied into an all-padding batch
        self._ahead = None  # (epoch, base, future): the next span's pipeline, built on the CPU meanwhile

    def __iter__(self) -> DALILoaderIter:
        return self

    def __len__(self) -> int:
        return self._length if self._length is not None else len(self._loader)

    @property
    def position(self) -> Position | None:
        """Where this iterator stands; None before its first ``next()``."""
        return self._position

    def state_dict(self) -> dict:
        """This iterator's position in its epoch, as part of ``loader.state_dict()``: the epoch, the
        batches returned, DALI's checkpoint there, and the samples delivered (runs of sample ids)."""
        position = self._position
        epoch = position.epoch
        state = {"epoch": epoch.number, "batches_done": position.done, "base": position.base,
                 "dali": position.checkpoint, "delivered": position.delivered_runs().tolist()}
        if epoch.carried is not None:
            state["carried"] = epoch.carried.runs.tolist()
        return state

    @property
    def finished(self) -> bool:
        """Every batch of its epoch returned (whether or not ``StopIteration`` was raised yet)."""
        return self._position is not None and self._position.done >= self._length

    def __repr__(self) -> str:
        if self._position is None:
            return f"<{type(self).__name__} of {self._loader!r}, not started>"
        return (f"<{type(self).__name__} of epoch {self._position.epoch.number}, batch {self._position.done} of "
                f"{self._length}>")

    # -- the epoch ------------------------------------------------------------------------------------

    def _start(self) -> None:
        """Claims the sampler's epoch (and a loaded state's position in it). Each step leaves a state that
        resumes correctly: the sampler moves on only after the loader knows this iterator."""
        loader = self._loader
        nothing = self._reader.nothing_left()
        if nothing is not None:
            raise BadSampleError(nothing)
        epoch, resume = loader.sampler.due(), loader.sampler.resume
        self._length = epoch.batches(loader.batch_size)
        if resume is not None:
            position = Position(epoch, resume.batches_done, resume.base, resume.checkpoint,
                                (ids_of(resume.delivered),) if resume.delivered.size else ())
        else:
            position = Position(epoch)
            # (the same pass every epoch: unshuffled, no random crops, not the rest of an epoch taken over)
            self._reusable = not loader.train and not loader.shuffle and epoch.carried is None
            if self._reusable and loader._spare is not None:  # rewound: its threads and buffers kept
                self._dali, loader._spare = loader._spare, None
        self._position = position
        loader._started(self)
        loader.sampler.start()

    @property
    def _real_batches(self) -> int:
        """Batches that hold real samples of this rank (the rest, if any, is one of padding)."""
        n, b = self._position.epoch.num_samples, self._loader.batch_size
        return n // b if self._position.epoch.drop_last else -(-n // b)

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if self._position is None:
            self._start()
        position = self._position
        if position.done >= self._length:
            self._end()
            raise StopIteration
        epoch, done = position.epoch, position.done
        while True:
            if done >= self._real_batches:  # this rank's samples ended on a full batch: one of padding
                batch, ids, checkpoint = self._padding_batch(), np.zeros(0, dtype=np.int64), position.checkpoint
                break
            try:
                ready = self._take_ahead(position) if self._dali is None else None
                if ready is not None:  # the next span's pipeline, built and its first batch read meanwhile
                    self._dali, start, out = ready
                    position = self._position = replace(position, checkpoint=start)
                else:
                    if self._dali is None:
                        with signals_deferred():
                            self._dali = self._loader._build(epoch, position.checkpoint, position.base)
                    if position.checkpoint is None:  # (where a rebuild starts from, before anything is read)
                        position = self._position = replace(position, checkpoint=self._dali.checkpoints()[0])
                    (out,) = next(self._dali)
            except RuntimeError as error:  # DALI stopped: name the sample, then raise or skip it
                self._drop_pipeline()
                failure = classify_failure(error)
                if failure.kind == "other":
                    raise
                self._raise_unless_a_sample(failure, error, position)
                # DALI's frames in the error's traceback hold the failed pipeline: let it go before the
                # probes and the rebuild make others (the traceback stays, without their locals)
                traceback.clear_frames(error.__traceback__)
                try:
                    with signals_deferred():  # (its probes build pipelines)
                        restart = self._reader.recover(failure, error, epoch, done, position.checkpoint,
                                                       position.base)
                except RuntimeError as again:  # (DALI may lose the reason: then the replay's build says it)
                    said = classify_failure(again)
                    if said.kind != "storage":
                        raise
                    raise self._storage_failure(said, position) from None
                self._loader._ledger.found(restart.problems, cause=error)  # the policy: raise, or skip
                self._reader.skip(restart.problems)
                self._reusable = False  # (a pipeline rebuilt mid-epoch covers only the rest)
                position = self._position = replace(
                    position, checkpoint=restart.checkpoint,
                    base=restart.base if restart.base is not None else position.base)
                continue
            except StopIteration:
                self._drop_pipeline()
                raise RuntimeError(f"DALI ended epoch {epoch.number} after batch {done} of {self._real_batches} "
                                   f"({self._reader.describe()}); loader.state_dict() resumes there") from None
            except BaseException:  # interrupted inside DALI: the next call rebuilds from the position
                self._drop_pipeline()
                raise
            try:
                if out["images"].shape[0] == 0:  # (an all-padding batch of DALI's own)
                    continue
                batch, ids = self._batch(out, done)
                checkpoint = self._dali.checkpoints()[0]
            except BaseException:  # DALI is a batch ahead of the position: the next call rebuilds there
                self._drop_pipeline()
                raise
            break
        end = self._reader.span_end(epoch, position.base)
        if end is not None and done + 1 == end < self._real_batches:  # its pipeline's span of the epoch ends here
            self._dali = None  # (the next call takes the next span's, built meanwhile, or builds it)
            if self._loader.device.type == "cuda":  # (a span's CPU buffers are left to the collector: a full
                release_unused(self._loader.device)  # collection costs ~0.1 s a span)
            self._position = Position(epoch, done + 1, done + 1, None, (*position.delivered, ids))
        else:
            self._position = Position(epoch, done + 1, position.base, checkpoint, (*position.delivered, ids))
            # (once the span's last batches are being prefetched, its pipeline computes no more: the next's turn)
            if end is not None and end < self._real_batches and end - (done + 1) <= self._loader.prefetch_queue_depth:
                self._build_ahead(epoch, end)
        return batch

    def _build_ahead(self, epoch: Epoch, base: int) -> None:
        """On the CPU, builds the pipeline of the span from batch ``base`` in a thread, and reads its first
        batch there, while the current span's last batches are read: a switch then costs no build and no
        cold first batch. (Not on a GPU: two pipelines at once would hold both their memory.)"""
        if self._loader.device.type != "cpu" or self._ahead is not None:
            return
        import concurrent.futures

        def build():
            dali = self._loader._build(epoch, None, base)
            start = dali.checkpoints()[0]
            (out,) = next(dali)
            return dali, start, out

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dali-resizer-span")
        self._ahead = (epoch, base, pool.submit(build))
        pool.shutdown(wait=False)

    def _take_ahead(self, position: Position):
        """``(pipeline, its checkpoint at its start, its first batch)`` built ahead for ``position`` (a
        span's start), else None: then the caller builds it, and meets any failure the thread met."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or position.checkpoint is not None or ahead[0] is not position.epoch or ahead[1] != (
                position.base):
            return None
        try:
            return ahead[2].result()  # (a KeyboardInterrupt while it waits is the caller's, as in a build)
        except Exception:  # (a bad sample, the storage: met again, and handled, by the build in this thread)
            return None

    def _end(self) -> None:
        """The epoch is over: an evaluation pass from its start hands its pipeline, rewound, to the next."""
        if self._dali is not None and self._reusable and self._loader._spare is None:
            try:
                next(self._dali)  # (DALI's epoch ends with its StopIteration; only then does it rewind)
            except StopIteration:
                self._dali.reset()
                self._loader._spare = self._dali
        self._dali = None

    def _drop_pipeline(self) -> None:
        """Lets go of the current pipeline before any other is built: DALI's memory pools do not shrink,
        so two pipelines at once would hold both their memory."""
        self._ahead = None
        if self._dali is not None:
            self._dali = None
            release_unused(self._loader.device)

    # -- failures -------------------------------------------------------------------------------------

    def _raise_unless_a_sample(self, failure: DaliFailure, error: RuntimeError, position: Position) -> None:
        """A GPU, storage or index failure is never a bad sample: it is raised as what it is."""
        epoch, done, device = position.epoch.number, position.done, self._loader.device
        if failure.kind == "device":
            kind = torch.OutOfMemoryError if "memory" in failure.reason.lower() else RuntimeError
            raise kind(f"DALI's GPU work failed after batch {done} of epoch {epoch} on {device} (not a "
                       f"bad sample; DALI: {failure.reason}); free GPU memory, or lower batch_size or "
                       f"device_memory_padding: loader.state_dict() resumes there") from error
        if failure.kind == "storage":  # not a sample's fault: the storage went away
            raise self._storage_failure(failure, position) from None
        if failure.kind == "index":
            raise ValueError(f"{failure.reason} (DALI); `python -m dali_resizer.shards index TAR` rewrites the index "
                             f"of a tar, `python -m dali_resizer.shards verify` checks them all") from None

    def _storage_failure(self, failure: DaliFailure, position: Position) -> OSError:
        """What to raise when the storage failed under DALI's reader: the object removed while the epoch
        ran, named (``FileNotFoundError``), else the storage unreachable (``ConnectionError``)."""
        epoch, done = position.epoch, position.done
        gone = self._reader.missing(epoch, done) if "curlCode" not in failure.reason else []
        if gone:
            return FileNotFoundError(f"{gone[0]}: removed while epoch {epoch.number} was read (after batch {done}); "
                                     f"put it back and loader.state_dict() resumes the epoch there")
        return ConnectionError(
            f"{self._reader.describe()} at {self._loader.dataset_location()}: reading stopped after batch {done} of "
            f"epoch {epoch.number} (DALI: {failure.reason}); loader.state_dict() resumes the epoch there once the "
            f"storage answers again")

    # -- batches --------------------------------------------------------------------------------------

    def _batch(self, out: dict, done: int) -> tuple[tuple[torch.Tensor, ...], np.ndarray]:
        """The user's batch from DALI's outputs (a shorter last batch padded up to the rank's share), and
        the ids of the samples it delivers."""
        loader = self._loader
        images = loader._images(out["images"])
        labels, indices, ids, problems = self._reader.labels(out)
        if problems:  # the policy: raise, or skip (their rows are padding already)
            loader._ledger.found(problems)
            self._reader.skip(problems)
        labels, indices = loader._to_device(labels), loader._to_device(indices)
        padding = 0 if self._position.epoch.drop_last else (
            self._position.epoch.samples_per_shard - self._position.epoch.num_samples)
        if padding and done == self._real_batches - 1 and images.shape[0] < loader.batch_size:
            images, labels, indices = loader._pad(images, labels, indices, images[-1:], padding)
        self._last = images[-1:]
        return loader._deliver(images, labels, indices), ids

    def _padding_batch(self) -> tuple[torch.Tensor, ...]:
        """A batch of padding only (label ``PAD_LABEL``), for a rank whose real samples ended on a full
        batch while another rank has one more sample."""
        loader = self._loader
        last = self._last
        if last is None:  # (resumed after the last real batch: its image is not at hand)
            last = torch.zeros((1, 3, *loader.size), dtype=loader.dtype, device=loader.device).contiguous(
                memory_format=loader.memory_format)
        empty = torch.empty(0, dtype=torch.int64, device=loader.device)
        count = self._position.epoch.samples_per_shard - self._position.epoch.num_samples
        images, labels, indices = loader._pad(last[:0], empty, empty if loader.return_index else None, last, count)
        return loader._deliver(images, labels, indices)


def release_unused(device: torch.device) -> None:
    """Frees the pipelines no longer referenced and, on a GPU, hands DALI's unused pool memory back."""
    gc.collect()
    if device.type == "cuda":
        from nvidia.dali.backend import ReleaseUnusedMemory

        ReleaseUnusedMemory()


@contextmanager
def signals_deferred():
    """Handles SIGINT and SIGTERM that arrive inside the block when it ends: DALI defines a pipeline's
    graph on a per-thread stack that an exception raised in the middle (a ``KeyboardInterrupt``) leaves
    broken for every later pipeline of the process. Python-level handlers only (the main thread's)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, object]] = []
    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(number)
        if callable(handler):
            previous[number] = handler
            signal.signal(number, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for signum, frame in caught:
            previous[signum](signum, frame)
