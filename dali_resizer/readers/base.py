"""The interface between the loader and a source kind."""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dali_resizer.samples import BadSampleError, BadSamples

__all__ = ["Carried", "ReadPlan", "Reader", "Restart", "runs_of", "union_of_runs"]

_DALI_NAMES_SAMPLE = re.compile(r"Failed to decode sample #\d+ : (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class ReadPlan:
    """What the loader asks of a reader: its part of the data, the order, and the pipeline's settings.

    ``pipeline`` holds the settings every pipeline of ``pipelines/`` takes (size, train, decoder, dtype,
    threads, ...); the reader adds what its source kind needs.
    """

    batch_size: int
    shard_id: int
    num_shards: int
    shuffle: bool
    seed: int
    drop_last: bool
    prefetch_queue_depth: int
    pipeline: dict[str, Any] = field(default_factory=dict)
    sample_indices: bool = False  # labels() also gives each sample's index in the source

    def pipeline_settings(self, epoch: int, on_cpu: bool = False) -> dict[str, Any]:
        """``pipeline`` in DALI's terms for ``epoch``: its seed, the decoder for the device, DALI's dtype;
        ``on_cpu``: the same graph on the CPU (for a pipeline that decodes nothing)."""
        from nvidia.dali import types

        import pipelines

        settings = dict(self.pipeline)
        if on_cpu:
            settings |= {"device_id": None, "set_affinity": False}
        settings["dtype"] = {"float32": types.FLOAT, "float16": types.FLOAT16}[settings.get("dtype", "float32")]
        settings["decoder"] = pipelines.decoder_device(settings.get("device_id"))
        settings["seed"] = self.pipeline_seed(epoch)
        return settings

    def pipeline_seed(self, epoch: int) -> int:
        """The DALI seed of this shard's pipeline for ``epoch``: augmentations depend on (seed, epoch, shard)."""
        return int(np.random.SeedSequence([self.seed, epoch, self.shard_id]).generate_state(1)[0] & 0x7FFFFFFF)

    def order(self, count: int, epoch: int) -> np.ndarray:
        """The epoch's order of ``count`` items, identical on every shard."""
        return np.random.default_rng([self.seed, epoch]).permutation(count) if self.shuffle else np.arange(count)


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


def _ids_of(runs: np.ndarray) -> np.ndarray:
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
class Restart:
    """Where the loader rebuilds its pipeline after bad samples were skipped: from a DALI checkpoint,
    or from a fresh list whose first batch is the epoch's batch ``base``."""

    checkpoint: bytes | None = None
    base: int | None = None


class Reader(abc.ABC):
    """One source kind (an image folder, WebDataset shards) as the loader reads it.

    A reader builds the DALI pipeline of an epoch (from its start, a batch of it, or a checkpoint),
    says what its outputs are called, turns a batch's outputs into labels (bad samples the pipeline
    reported are handed to the ledger, their rows marked as padding), and, when DALI stops on a sample,
    names it. Where the bytes live (a local path or elsewhere) is the storage's concern, not the
    reader's. It keeps what it learned of bad samples in :meth:`state_dict`.
    """

    #: the pipeline's outputs, in order; the first three are always images, targets, status
    output_names: tuple[str, ...] = ("images", "targets", "status")

    def __init__(self, source, plan: ReadPlan, ledger: BadSamples) -> None:
        self.source = source
        self.plan = plan
        self.ledger = ledger
        self.carried: Carried | None = None  # the epoch this world took over mid-way, and what was read of it
        self._delivered: list[np.ndarray] = []  # ids of the samples this shard delivered in the epoch in progress

    def __len__(self) -> int:
        return len(self.source)

    @property
    def total(self) -> int:
        """Samples the world reads in the epoch due: the source's, less those delivered before a
        world of another size handed the epoch over (:attr:`carried`)."""
        return len(self.source) - (self.carried.count if self.carried is not None else 0)

    @property
    def num_samples(self) -> int:
        """Real samples in this shard per epoch (before ``drop_last``, without padding)."""
        total, k, n = self.total, self.plan.shard_id, self.plan.num_shards
        return total * (k + 1) // n - total * k // n

    @property
    def samples_per_shard(self) -> int:
        """What every shard delivers per epoch: the largest shard's size (padded up to it) without
        ``drop_last``, the smallest's with it."""
        total, n = self.total, self.plan.num_shards
        return -(-total // n) if not self.plan.drop_last else total // n

    def carried_for(self, epoch: int) -> Carried | None:
        return self.carried if self.carried is not None and self.carried.epoch == epoch else None

    def begin(self, delivered: np.ndarray | None = None) -> None:
        """Starts recording an epoch's delivered samples: from nothing, or from a saved state's."""
        self._delivered = [] if delivered is None else [_ids_of(delivered)]

    def delivered(self) -> np.ndarray:
        """The samples of the epoch in progress delivered so far, by this shard or before this world
        took the epoch over: sorted, disjoint ``[start, stop)`` runs of sample ids."""
        self._delivered = [np.concatenate(self._delivered)] if self._delivered else []
        mine = runs_of(self._delivered[0]) if self._delivered else np.zeros((0, 2), dtype=np.int64)
        return union_of_runs(mine, self.carried.runs) if self.carried is not None else mine

    def track(self, ids: np.ndarray) -> None:
        """Records the ids of a delivered batch's samples (a skipped sample's place counts as its own)."""
        self._delivered.append(np.asarray(ids, dtype=np.int64))

    @property
    def batches_per_epoch(self) -> int:
        """Batches every shard yields per epoch (``len(loader)``)."""
        per_shard, b = self.samples_per_shard, self.plan.batch_size
        return per_shard // b if self.plan.drop_last else -(-per_shard // b)

    @abc.abstractmethod
    def describe(self) -> str:
        """A few words for ``repr``: what the source is."""

    @abc.abstractmethod
    def pipeline(self, epoch: int, checkpoint: bytes | None = None, base: int = 0, replay: bool = False):
        """The built DALI pipeline of ``epoch``: from ``checkpoint`` (DALI's), else from the epoch's
        batch ``base``; ``replay``: one that decodes nothing (see ``pipelines.decode``)."""

    @abc.abstractmethod
    def labels(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(labels, indices)`` of a batch on the CPU, padding rows marked ``PAD_LABEL`` (index -1);
        ``indices`` is None where the source has no sample index."""

    @abc.abstractmethod
    def recover(self, error: RuntimeError, epoch: int, done: int, checkpoint: bytes | None) -> Restart:
        """DALI stopped on a batch after ``done`` delivered ones (``checkpoint``: the stopped pipeline's,
        at that point): names the bad sample(s), hands them to the ledger (which raises, or records
        them) and says where to rebuild the pipeline."""

    def missing(self, epoch: int, done: int) -> list[str]:
        """The files this shard was about to read that are gone (after a storage failure)."""
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 (a reader with no state of its own)
        return None

    # -- helpers for recover() ----------------------------------------------------------------------

    def probe(self, samples) -> dict[str, str]:
        """``{name: problem}`` of ``(name, bytes)`` samples that do not decode alone: on the CPU first
        (a probe takes no GPU memory); where none fails there but the loader decodes on a GPU, again
        with the loader's own decoder (a sample nvJPEG refuses is bad for this loader too)."""
        from pipelines.probe import probe_samples

        samples = list(samples)
        problems = probe_samples(samples)
        device_id = self.plan.pipeline.get("device_id")
        if problems or device_id is None:
            return problems
        return probe_samples(samples, device_id=device_id, decoder_options=self.plan.pipeline.get("decoder_options"))

    @staticmethod
    def dali_message(error: RuntimeError) -> tuple[str, str | None]:
        """(DALI's reason, the sample DALI named or None) from a pipeline error."""
        text = str(error)
        detail = next((line.strip() for line in reversed(text.splitlines())
                       if line.strip() and "pipeline" not in line.lower()), "decode failed")
        named = _DALI_NAMES_SAMPLE.search(text)
        if named:  # (the sample's name is said once, in front)
            detail = detail.replace(f" : {named.group(1).strip()}", "")
        return detail, named.group(1).strip() if named else None

    def report(self, bad: dict[str, str], repeated: list[str], detail: str, where: str,
               error: RuntimeError) -> None:
        """Hands what :meth:`recover` found to the ledger; a batch that fails without a failing sample,
        or a sample that fails again after it was skipped, is an error either way."""
        if not bad:
            hint = ("; the samples decode whole on this GPU: if its window decoding is what fails (nvImageCodec "
                    "issue 55, nvImageCodec 0.9 on A100/H100-class GPUs), roi_decode=False decodes whole images"
                    if self.plan.pipeline.get("device_id") is not None and self.plan.pipeline.get("roi_decode", True)
                    else "")
            raise BadSampleError(f"DALI failed on a batch of {where} ... and no single sample fails alone: "
                                 f"{detail}{hint}") from error
        if repeated:
            raise BadSampleError(f"{repeated[0]}: still fails after it was skipped; DALI: {detail}") from error
        self.ledger.found(bad, stacklevel=4)  # (found, report, recover, the loader: the caller)
