"""What each of the auto-augment policies' operations costs in a DALI graph, and the policies whole.

The same batch of random 224 px images, held in memory (``fn.external_source``), goes through one
operation per pipeline; the figure is milliseconds per batch and images/s, median of ``--repeats``
timed runs of ``--batches`` batches each, and the ratio to the pipeline that does nothing. This is the
breakdown behind ``benchmarks/throughput.py``'s ``dali-bilinear-ta-wide`` / ``-ra`` rows.

    python benchmarks/augment_ops.py                   # CPU, all cores
    python benchmarks/augment_ops.py --device gpu      # the same operations on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from nvidia.dali import fn, pipeline_def

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

#: one pipeline each: the policies whole (as the loader builds them), then single operations at a
#: middle magnitude, with the policies' fill of 0
OPERATIONS = {
    "nothing": lambda x, size: x,
    "trivial_augment_wide": lambda x, size: _policy("ta_wide", x, size),
    "rand_augment (n=2, m=9)": lambda x, size: _policy("ra", x, size),
    "shear_x (warp_affine)": lambda x, size: fn.warp_affine(x, matrix=[1, 0.3, 0, 0, 1, 0], fill_value=0,
                                                           inverse_map=False),
    "rotate": lambda x, size: fn.rotate(x, angle=15.0, fill_value=0, keep_size=True),
    "brightness": lambda x, size: fn.brightness(x, brightness=1.3),
    "contrast": lambda x, size: fn.contrast(x, contrast=1.3),
    "saturation (color)": lambda x, size: fn.saturation(x, saturation=1.3),
    "equalize": lambda x, size: fn.equalize(x),
    "posterize (bitwise and)": lambda x, size: x & np.uint8(0xF0),
    "solarize (invert above)": lambda x, size: x ^ np.uint8(0xFF),
}


def _policy(name: str, images, size: int):
    from dali_resizer.spec import TransformSpec
    from pipelines.stages import augment

    return augment(images, TransformSpec((size, size), True, auto_augment=name))


def measure(name: str, op, images: list, args) -> float:
    @pipeline_def(batch_size=len(images), num_threads=args.threads, device_id=0 if args.device == "gpu" else None,
                  seed=1, enable_conditionals=True, prefetch_queue_depth=1)
    def pipe():
        x = fn.external_source(lambda: images, batch=True, layout="HWC")
        return op(x.gpu() if args.device == "gpu" else x, args.size)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        p = pipe()
        p.build()
    for _ in range(3):  # warm-up
        p.run()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.batches):
            outputs = p.run()
        if args.device == "gpu":
            outputs[0].as_cpu()  # (waits for the GPU's work)
        times.append((time.perf_counter() - start) / args.batches)
    del p
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", type=int, default=10, help="batches per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.batch_size)]
    rows = []
    for name, op in OPERATIONS.items():
        seconds = measure(name, op, images, args)
        rows.append({"operation": name, "ms_per_batch": 1000 * seconds, "images_per_s": args.batch_size / seconds})
    base = rows[0]["ms_per_batch"]
    print(f"{'operation':<26} {'ms/batch':>9} {'img/s':>9} {'ms over nothing':>16}")
    for r in rows:
        r["ms_over_nothing"] = r["ms_per_batch"] - base
        print(f"{r['operation']:<26} {r['ms_per_batch']:9.1f} {r['images_per_s']:9.0f} {r['ms_over_nothing']:16.1f}")
    report = {"config": vars(args), "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
