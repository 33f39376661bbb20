"""The epoch's order: which samples this rank reads, in which order, and from where the next epoch starts.

:class:`EpochSampler` is ``loader.sampler``: it plays ``DistributedSampler``'s part (``set_epoch``,
``len``, shuffle, seed, rank and world size) and owns the epoch that the next iterator reads, with the
position a loaded state resumes from. An iterator claims that epoch when it starts (its first
``next()``), as a frozen :class:`Epoch`; the iterator then owns its own position in it. Nothing else
holds a copy of either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Carried", "Epoch", "EpochBatchSampler", "EpochSampler", "Resume", "ids_of", "runs_of", "union_of_runs"]


def runs_of(ids: np.ndarray) -> np.ndarray:
    """Sample ids (any order, repeats allowed) as sorted, disjoint ``[start, stop)`` runs, ``(k, 2)`` int64."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if ids.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts, stops = ids[np.concatenate([[0], breaks])], ids[np.concatenate([breaks - 1, [ids.size - 1]])] + 1
    return np.stack([starts, stops], axis=1)


def union_of_runs(*many: np.ndarray) -> np.ndarray:
    """The union of several sets of ``[start, stop)`` runs, as sorted, disjoint runs."""
    runs = np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1, 2) for r in many] or [np.zeros((0, 2))])
    if runs.shape[0] == 0:
        return np.zeros((0, 2), dtype=np.int64)
    runs = runs[np.argsort(runs[:, 0], kind="stable")]
    reach = np.maximum.accumulate(runs[:, 1])
    new = np.concatenate([[True], runs[1:, 0] > reach[:-1]])  # a run that starts past all before it
    starts = runs[new, 0]
    stops = reach[np.concatenate([np.flatnonzero(new)[1:] - 1, [runs.shape[0] - 1]])]
    return np.stack([starts, stops], axis=1).astype(np.int64)


def ids_of(runs: np.ndarray) -> np.ndarray:
    runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs.tolist()] or [np.zeros(0, np.int64)])


@dataclass(frozen=True)
class Carried:
    """The samples of ``epoch`` that were delivered before this world took the epoch over (a state
    saved mid-epoch by a world of another size): sorted, disjoint ``[start, stop)`` runs of sample ids.
    The rest of the epoch is what this world reads, split among its shards."""

    epoch: int
    runs: np.ndarray  # (k, 2) int64

    @property
    def count(self) -> int:
        return int((self.runs[:, 1] - self.runs[:, 0]).sum())

    def below(self, ids: np.ndarray) -> np.ndarray:
        """How many delivered ids are ``< ids`` (elementwise)."""
        starts, stops = self.runs[:, 0], self.runs[:, 1]
        whole = np.concatenate([[0], np.cumsum(stops - starts)])
        k = np.searchsorted(starts, ids, side="right")  # runs that start below each id
        last = np.maximum(k - 1, 0)
        inside = np.where(k > 0, np.minimum(ids, stops[last]) - starts[last], 0)
        return whole[last] * (k > 0) + inside

    def mask(self, total: int) -> np.ndarray:
        """``(total,)`` bool: True where the id was delivered."""
        mark = np.zeros(total + 1, dtype=np.int64)
        np.add.at(mark, self.runs[:, 0], 1)
        np.add.at(mark, self.runs[:, 1], -1)
        return np.cumsum(mark[:-1]) > 0

    def left_in(self, first: int, count: int) -> np.ndarray:
        """The positions in ``[0, count)`` of ids ``first + position`` that were not delivered."""
        positions = np.arange(count, dtype=np.int64)
        lo, hi = np.searchsorted(self.runs[:, 1], first, side="right"), np.searchsorted(self.runs[:, 0], first + count)
        keep = np.ones(count, dtype=bool)
        for start, stop in self.runs[lo:hi].tolist():
            keep[max(start - first, 0) : max(min(stop - first, count), 0)] = False
        return positions[keep]


@dataclass(frozen=True)
class Epoch:
    """One epoch of one rank, as an iterator reads it: what every shard agrees on (the order, from
    ``(seed, number)``), this rank's part of it, and what of it was read before this world took it over
    (``carried``, from the states of a world of another size)."""

    number: int
    seed: int
    shuffle: bool
    drop_last: bool
    rank: int
    num_replicas: int
    source_len: int
    carried: Carried | None = None

    @property
    def total(self) -> int:
        """Samples the world reads in this epoch: the source's, less those carried."""
        return self.source_len - (self.carried.count if self.carried is not None else 0)

    @property
    def num_samples(self) -> int:
        """Real samples of this rank (before ``drop_last``, without padding)."""
        low, high = self.bounds(self.total)
        return high - low

    @property
    def samples_per_shard(self) -> int:
        """What every rank delivers: the largest part (the others padded up to it) without ``drop_last``,
        the smallest with it."""
        return -(-self.total // self.num_replicas) if not self.drop_last else self.total // self.num_replicas

    def batches(self, batch_size: int) -> int:
        """Batches every rank yields in this epoch."""
        n = self.samples_per_shard
        return n // batch_size if self.drop_last else -(-n // batch_size)

    def bounds(self, count: int) -> tuple[int, int]:
        """This rank's contiguous part ``[low, high)`` of ``count`` items in the epoch's order."""
        return count * self.rank // self.num_replicas, count * (self.rank + 1) // self.num_replicas

    def order(self, count: int) -> np.ndarray:
        """The epoch's order of ``count`` items, the same on every rank."""
        return np.random.default_rng([self.seed, self.number]).permutation(count) if self.shuffle else np.arange(count)

    def pipeline_seed(self) -> int:
        """The DALI seed of this rank's pipeline: augmentations depend on (seed, epoch, rank)."""
        return int(np.random.SeedSequence([self.seed, self.number, self.rank]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass(frozen=True)
class Resume:
    """Where a loaded state resumes its epoch: after ``batches_done`` batches, from DALI's ``checkpoint``
    of the pipeline whose list starts at the epoch's batch ``base``; ``delivered``: the samples this rank
    had delivered, as ``[start, stop)`` runs."""

    batches_done: int
    base: int
    checkpoint: bytes | None
    delivered: np.ndarray


class EpochSampler:
    """``loader.sampler``: this rank's part of every epoch and its order, ``DistributedSampler``'s role.

    ``set_epoch(e)`` sets the epoch that the next iterator reads; without it, each iterator that starts
    reads the epoch after the last one started, so consecutive epochs differ in one process too.
    ``len()`` is the samples this rank delivers per epoch, padding included (``DistributedSampler``'s
    ``num_samples``). Its attributes mean what they mean there: ``epoch``, ``shuffle``, ``seed``,
    ``drop_last``, ``rank``, ``num_replicas``.

    Args:
        source_len: Samples in the source.
        num_replicas: Ranks that share each epoch.
        rank: This rank.
        shuffle: A new order every epoch, from ``(seed, epoch)``.
        seed: Seed of the order and of the augmentations.
        drop_last: Every rank reads the smallest part and whole batches only, instead of the largest
            part with padding.
        follow: A torch sampler whose ``set_epoch`` the training script calls (``DistributedSampler``):
            its epoch, when it changes, is this sampler's.
    """

    def __init__(
        self,
        source_len: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        follow=None,
    ) -> None:
        self.source_len = source_len
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._resume: Resume | None = None
        self._carried: Carried | None = None
        self._follow = follow
        self._followed = getattr(follow, "epoch", None)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iterator reads; its order and augmentations depend on ``(seed, epoch)`` only.
        A loaded state's position holds for its own epoch only."""
        if not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        if int(epoch) != self.epoch:
            self._resume = None  # (a loaded position is in the epoch that was due)
        self.epoch = int(epoch)
        if self._carried is not None and self._carried.epoch != self.epoch:
            self._carried = None

    def due(self) -> Epoch:
        """The epoch the next iterator reads, not yet claimed."""
        self._sync()
        carried = self._carried if self._carried is not None and self._carried.epoch == self.epoch else None
        return Epoch(self.epoch, self.seed, self.shuffle, self.drop_last, self.rank, self.num_replicas,
                     self.source_len, carried)

    @property
    def resume(self) -> Resume | None:
        """The position in :meth:`due` that the next iterator starts from (a loaded mid-epoch state)."""
        return self._resume

    def start(self) -> tuple[Epoch, Resume | None]:
        """Claims the epoch due for an iterator that starts now, with its position, and moves on: the
        next iterator reads the next epoch unless ``set_epoch`` says otherwise."""
        epoch, resume = self.due(), self._resume
        self._resume, self._carried = None, None
        self.epoch = epoch.number + 1
        return epoch, resume

    def _sync(self) -> None:
        """Takes the followed sampler's epoch when its ``set_epoch`` was called since it was last read."""
        if self._follow is not None and getattr(self._follow, "epoch", None) != self._followed:
            self._followed = self._follow.epoch
            self.set_epoch(self._followed)

    def __len__(self) -> int:
        return self.due().samples_per_shard

    # -- state (torchdata's Stateful: each component saves itself) -----------------------------------

    def state_dict(self) -> dict:
        """The epoch due and the position it starts from: its start, or a loaded state's position."""
        epoch, resume = self.due(), self._resume
        state = {"epoch": epoch.number, "batches_done": 0, "base": 0, "dali": None}
        if resume is not None:
            state |= {"batches_done": resume.batches_done, "base": resume.base, "dali": resume.checkpoint,
                      "delivered": union_of_runs(resume.delivered, *(
                          [epoch.carried.runs] if epoch.carried is not None else [])).tolist()}
        elif epoch.carried is not None:
            state["delivered"] = epoch.carried.runs.tolist()
        if epoch.carried is not None:  # an epoch taken over from another world: what it had read decides the split
            state["carried"] = epoch.carried.runs.tolist()
        return state

    def load_state_dict(self, state: dict) -> None:
        """The epoch due from a loader state (checked by the loader), with its position when it was saved
        mid-epoch, and what another world had read of it (``carried``)."""
        self._sync()
        epoch = int(state["epoch"])
        carried = Carried(epoch, np.asarray(state["carried"], dtype=np.int64).reshape(-1, 2)) if (
            state.get("carried") is not None) else None
        resume = None
        if state["batches_done"]:
            delivered = np.asarray(state.get("delivered") or [], dtype=np.int64).reshape(-1, 2)
            if carried is not None:  # (what this rank delivered, apart from what the old world had read)
                delivered = runs_of(np.setdiff1d(ids_of(delivered), ids_of(carried.runs)))
            resume = Resume(state["batches_done"], state["base"], state["dali"], delivered)
        self.epoch, self._resume, self._carried = epoch, resume, carried

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(epoch={self.epoch}, shuffle={self.shuffle}, seed={self.seed}, "
                f"drop_last={self.drop_last}, rank={self.rank}, num_replicas={self.num_replicas})")


class EpochBatchSampler:
    """``loader.batch_sampler``: the epoch's batches, ``BatchSampler``'s attributes over ``loader.sampler``
    (``sampler``, ``batch_size``, ``drop_last``, ``len``: batches per epoch). The batches themselves are
    cut by DALI: this object says how many, not which samples."""

    def __init__(self, sampler: EpochSampler, batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size

    @property
    def drop_last(self) -> bool:
        return self.sampler.drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.sampler.due().batches(self.batch_size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(batch_size={self.batch_size}, drop_last={self.drop_last}, "
                f"sampler={self.sampler})")
