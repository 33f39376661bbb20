"""What DALILoader's iterator adds to DALI's own PyTorch iterator over the same pipeline, per batch.

    python benchmarks/loader_overhead.py                          # the embedded synthetic set
    python benchmarks/loader_overhead.py --data ../shared/data/imagenet-sample --batch-size 64

DALILoader's iterator wraps ``DALIGenericIterator``: per batch it turns DALI's outputs into labels,
records the samples delivered, and commits its position with DALI's checkpoint (``checkpoints()``),
so that an exception anywhere in ``next()`` leaves an exact state. Two contenders, one epoch each,
alternating, on the same built graph (the loader's, shuffled training):

    dali      DALIGenericIterator over the loader's pipeline, outputs read and nothing else (baseline)
    loader    iter(DALILoader): the same pipeline, what users iterate

The first batch of each epoch (the pipeline's start) is not timed; the pipeline's shutdown at the end
is, for both (DALILoader's iterator lets its pipeline go when its epoch ends). Printed: ms per batch (median of
--repeats, and the spread), the ratio loader / dali, and DALI's ``checkpoints()`` alone (median of
100 calls mid-epoch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _epoch_seconds(batches, release) -> tuple[float, int]:
    """Seconds per batch over an epoch, its first batch untimed, with the pipeline's shutdown after
    its last (``release``): DALILoader's iterator lets its pipeline go when the epoch ends."""
    next(batches)
    count, start = 0, time.perf_counter()
    for _ in batches:
        count += 1
    release()
    return (time.perf_counter() - start) / max(count, 1), count


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="image folder or shards (default: the embedded synthetic set)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args(argv)

    import torch

    from dali_resizer import DALILoader, make_synthetic_folder

    data = a.data or str(make_synthetic_folder())
    loader = DALILoader(data, batch_size=a.batch_size, shuffle=True, size=a.size, num_threads=a.threads, device="cpu")
    times: dict[str, list[float]] = {"dali": [], "loader": []}
    for repeat in range(a.repeats):
        loader.set_epoch(repeat)
        dali = [loader._build(loader.sampler.due())]  # (the pipeline the loader's iterator builds for that epoch)
        seconds, batches = _epoch_seconds((out[0]["images"].shape for out in dali[0]), dali.clear)
        times["dali"].append(seconds)
        loader.set_epoch(repeat)
        times["loader"].append(_epoch_seconds(iter(loader), lambda: None)[0])
    dali = loader._build(loader.sampler.due())
    next(dali)
    checkpoint_seconds = []
    for _ in range(100):
        start = time.perf_counter()
        dali.checkpoints()
        checkpoint_seconds.append(time.perf_counter() - start)
    rows = {name: {"ms_per_batch": 1e3 * statistics.median(values),
                   "spread_ms": 1e3 * (max(values) - min(values))} for name, values in times.items()}
    ratio = rows["loader"]["ms_per_batch"] / rows["dali"]["ms_per_batch"]
    checkpoint_ms = 1e3 * statistics.median(checkpoint_seconds)
    print(f"{len(loader.dataset)} samples, batch {a.batch_size}, size {a.size}, {a.threads} threads, "
          f"{batches} timed batches an epoch, {a.repeats} epochs each, torch {torch.__version__}")
    for name, row in rows.items():
        print(f"  {name:<7} {row['ms_per_batch']:8.2f} ms/batch  (spread {row['spread_ms']:.2f})")
    print(f"  loader / dali: {ratio:.3f}; DALI's checkpoints(): {checkpoint_ms:.3f} ms a call")
    report = {"samples": len(loader.dataset), "batch_size": a.batch_size, "size": a.size, "threads": a.threads,
              "rows": rows, "ratio": ratio, "checkpoint_ms": checkpoint_ms}
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
