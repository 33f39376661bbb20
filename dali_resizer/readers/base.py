"""The interface between the loader and a source kind."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dali_resizer.sampler import Epoch
from dali_resizer.samples import BadSampleError, BadSamples, DaliFailure, describe_bytes
from dali_resizer.spec import TransformSpec

__all__ = ["ReadPlan", "Reader", "Restart"]

@dataclass(frozen=True)
class ReadPlan:
    """What the loader asks of a reader besides the epoch (an :class:`~dali_resizer.sampler.Epoch`, which
    says which samples and in which order): the batch size, what the graph does to each image
    (``spec``), and how the pipeline runs.

    ``pipeline`` holds DALI's pipeline settings (threads, device, prefetch depth, the GPU decoder's
    options); the reader adds what its source kind needs.
    """

    batch_size: int
    prefetch_queue_depth: int
    spec: TransformSpec
    pipeline: dict[str, Any] = field(default_factory=dict)
    sample_indices: bool = False  # labels() also gives each sample's index in the source
    cache: Any = None  # a ShardCache: tars in object storage are read from local copies (dali_resizer.cache)

    def pipeline_settings(self, epoch: Epoch, on_cpu: bool = False) -> dict[str, Any]:
        """``pipeline`` for ``epoch``, with the spec: its seed, the decoder for the device; ``on_cpu``: the
        same graph on the CPU (for a pipeline that decodes nothing)."""
        import pipelines

        settings = dict(self.pipeline, spec=self.spec)
        if on_cpu:
            settings |= {"device_id": None, "set_affinity": False}
        settings["decoder"] = pipelines.decoder_device(settings.get("device_id"))
        settings["seed"] = epoch.pipeline_seed()
        return settings


@dataclass(frozen=True)
class Restart:
    """What :meth:`Reader.recover` found: the bad samples (name -> problem), and where the loader
    rebuilds its pipeline once they are skipped: from a DALI checkpoint, or from a fresh list whose first
    batch is the epoch's batch ``base``."""

    problems: dict[str, str] = field(default_factory=dict)
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

    def __len__(self) -> int:
        return len(self.source)

    @abc.abstractmethod
    def describe(self) -> str:
        """A few words for ``repr``: what the source is."""

    @abc.abstractmethod
    def pipeline(self, epoch: Epoch, checkpoint: bytes | None = None, base: int = 0, replay: bool = False):
        """The built DALI pipeline of this rank's part of ``epoch``: from ``checkpoint`` (DALI's), else
        from the epoch's batch ``base``; ``replay``: one that decodes nothing (see ``pipelines.decode``)."""

    @abc.abstractmethod
    def labels(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray,
                                                             dict[str, str]]:
        """``(labels, indices, ids, problems)`` of a batch on the CPU: padding rows marked ``PAD_LABEL``
        (index -1), a bad sample's row among them; ``indices`` None where the plan asks for none; ``ids``:
        the sample ids the batch delivers (a skipped sample's place counts as its own), for the iterator's
        record of the epoch; ``problems``: the bad samples found (name -> problem), for the loader's
        policy (raise, or skip: then :meth:`skip`)."""

    @abc.abstractmethod
    def recover(self, failure: DaliFailure, error: RuntimeError, epoch: Epoch, done: int,
                checkpoint: bytes | None, base: int = 0) -> Restart:
        """DALI stopped on a batch after ``done`` delivered ones (``failure``: its reading of the error;
        ``checkpoint``: the pipeline's at that point, built from the epoch's batch ``base``): names the bad
        sample(s) and says where to rebuild the pipeline once the loader's policy has skipped them."""

    def known_bad(self) -> dict[str, str]:
        """Bad samples known before any is read (from the indexes): name -> problem."""
        return {}

    def span_end(self, epoch: Epoch, base: int) -> int | None:
        """The batch at which a pipeline built from the epoch's batch ``base`` ends (the loader then builds
        the next one from there); None: it reads the rest of the epoch."""
        return None

    def nothing_left(self) -> str | None:
        """Why no sample of the source is left to read (each one skipped as bad), else None: the loader
        raises it at an epoch's start."""
        return None

    def skip(self, names) -> None:  # noqa: B027 (a reader whose skipped samples the ledger alone records)
        """The loader's policy skips these samples, which :meth:`labels` or :meth:`recover` reported:
        from now on their places are padding."""
        return None

    def missing(self, epoch: Epoch, done: int) -> list[str]:
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

    def named(self, data: bytes, failure: DaliFailure) -> str:
        """The problem of the sample DALI's error named (``failure.sample``, whose bytes are ``data``): what
        the bytes are, DALI's words, and the decoder's own reason, which the decoding library prints on
        stderr (read back by decoding the sample alone with the loader's decoder)."""
        from pipelines.probe import decoder_words

        said = decoder_words(data, device_id=self.plan.pipeline.get("device_id"),
                             decoder_options=self.plan.pipeline.get("decoder_options"))
        return f"{describe_bytes(data)}; DALI: {failure.reason}{said}"

    def report(self, bad: dict[str, str], repeated: list[str], failure: DaliFailure, where: str,
               error: RuntimeError) -> dict[str, str]:
        """What :meth:`recover` found, checked: a batch that fails without a failing sample, or a sample
        that fails again after it was skipped, is an error whatever the policy; else ``bad``."""
        if not bad:
            hint = ("; the samples decode whole on this GPU: if its window decoding is what fails (nvImageCodec "
                    "issue 55, nvImageCodec 0.9 on A100/H100-class GPUs), roi_decode=False decodes whole images"
                    if self.plan.pipeline.get("device_id") is not None and self.plan.spec.roi_decode
                    else "")
            raise BadSampleError(f"DALI failed on a batch of {where} ... and no single sample fails alone: "
                                 f"{failure.reason}{hint}") from error
        if repeated:
            raise BadSampleError(f"{repeated[0]}: still fails after it was skipped; DALI: {failure.reason}") from error
        return bad
