"""Finding out why a file does not decode: a one-file DALI pipeline, and a look at the bytes."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterable

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from dali_resizer.samples import DaliFailure, classify_failure, describe_bytes
from pipelines.stages import decoder_device, mixed_decoder_options

__all__ = ["decode_samples", "decoder_words", "probe_bytes", "probe_samples"]


@pipeline_def(batch_size=1, num_threads=1, device_id=None)
def _one_sample(decoder: str = "cpu", decoder_options: dict | None = None):
    encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
    shape = fn.peek_image_shape(encoded)
    options = mixed_decoder_options(decoder_options) if decoder == "mixed" else {}
    return fn.decoders.image(encoded, device=decoder, output_type=types.RGB, **options), shape


# What the decoders print on stderr about a sample: DALI's codec plugins ("[ERROR] [tiff_parser] ..."),
# libjpeg-turbo's warnings ("Corrupt JPEG data: ..."), libpng's.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL = re.compile(r"^\[(ERROR|WARNING)\] ")
_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG file", "libpng warning", "libpng error")


@contextlib.contextmanager
def _stderr_into(said: list[str]):
    """Sends what is written to file descriptor 2 (by C libraries too) into ``said`` instead of the
    terminal, while the block runs: a probe reports the sample itself."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            said += [line.strip() for line in _ANSI.sub("", tmp.read().decode("utf-8", "replace")).splitlines()
                     if line.strip()]


def _decoder_said(lines: list[str]) -> str:
    if not lines:
        return ""
    return f" (decoder: {_LEVEL.sub('', lines[-1])})"


def probe_samples(samples: Iterable[tuple[str, bytes]], *, damaged: dict[str, str] | None = None,
                  device_id: int | None = None, decoder_options: dict | None = None) -> dict[str, str]:
    """Reads the header and decodes each ``(name, bytes)`` alone with the loader's decoder (on the
    CPU, or with nvJPEG on GPU ``device_id``, with its ``decoder_options``), as the loader would;
    returns ``{name: problem}`` for those that fail, the problem naming what the bytes are, what DALI
    said and what the decoder printed (which is kept off the terminal). ``damaged``: where a sample that
    decodes while the decoder warns of corrupt data is recorded (the loader reads it). One pipeline serves every
    sample until one fails (a failed pipeline is rebuilt). A failure of the GPU itself (its memory
    ran out) is raised, never reported as a sample's problem."""
    problems = {}
    pipe = None
    for name, data in samples:
        pipe = pipe or _probe_pipeline(device_id, decoder_options)
        failure, lines = _decode_alone(pipe, data)
        if failure is not None:
            problems[name] = f"{describe_bytes(data)}; DALI: {failure.reason}{_decoder_said(lines)}"
            pipe = None  # (a failed pipeline is rebuilt)
            continue
        warned = [line for line in lines if line.startswith(_DAMAGE)]
        if damaged is not None and warned:
            damaged[name] = f"{describe_bytes(data)}, decoded with the decoder's warning \"{warned[0]}\""
    return problems


def decoder_words(data: bytes, *, device_id: int | None = None, decoder_options: dict | None = None) -> str:
    """What the decoder prints about ``data`` decoded alone (as :func:`probe_samples` decodes it):
    ``" (decoder: <its last line>)"``, or ``""`` when it prints nothing. DALI's error about a sample
    says only that it failed; the decoder's reason (``libpng error: ...``, ``Bogus Huffman table
    definition``) is printed on stderr by the decoding library, and this reads it back."""
    _, lines = _decode_alone(_probe_pipeline(device_id, decoder_options), data)
    return _decoder_said(lines)


def _probe_pipeline(device_id: int | None, decoder_options: dict | None):
    pipe = _one_sample(decoder=decoder_device(device_id), decoder_options=decoder_options, device_id=device_id,
                       prefetch_queue_depth=1)
    pipe.build()
    return pipe


def _decode_alone(pipe, data: bytes) -> tuple[DaliFailure | None, list[str]]:
    """Decodes ``data`` with a probe pipeline: (DALI's failure, or None; what the decoder printed on
    stderr, kept off the terminal). A failure of the GPU itself is raised."""
    pipe.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8)])
    lines: list[str] = []
    try:
        with _stderr_into(lines):
            pipe.run()
    except RuntimeError as e:
        failure = classify_failure(e)
        if failure.kind == "device":
            raise
        return failure, lines
    return None, lines


@pipeline_def(num_threads=2, device_id=None)
def _sample_batch():
    encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
    return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)


def decode_samples(samples: Iterable[tuple[str, bytes]], batch_size: int = 64,
                   damaged: dict[str, str] | None = None) -> dict[str, str]:
    """Decodes ``(name, bytes)`` pairs with DALI on the CPU, a batch at a time, as the loader would;
    a batch that fails, or whose decoder warns of corrupt data, is probed sample by sample
    (:func:`probe_samples`). Returns ``{name: problem}`` of those that fail; those that decode with a
    warning of corrupt data go into ``damaged``."""
    problems: dict[str, str] = {}
    pipe, chunk = None, []

    def run(chunk):
        nonlocal pipe
        if pipe is None:
            pipe = _sample_batch(batch_size=batch_size, prefetch_queue_depth=1)
            pipe.build()
        pipe.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8) for _, data in chunk])
        lines: list[str] = []
        try:
            with _stderr_into(lines):
                pipe.run()
        except RuntimeError:
            pipe = None  # (a failed pipeline is rebuilt)
            lines.append("failed")
        if lines:
            problems.update(probe_samples(chunk, damaged=damaged))

    for sample in samples:
        chunk.append(sample)
        if len(chunk) == batch_size:
            run(chunk)
            chunk = []
    if chunk:
        run(chunk)
    return problems


def probe_bytes(data: bytes) -> str | None:
    """:func:`probe_samples` of one sample: ``None`` when it decodes, else the problem."""
    return probe_samples([("", data)]).get("")
