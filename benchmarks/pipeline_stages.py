"""Where the DALI CPU pipeline's time goes: the same files through growing prefixes of the pipeline.

    python benchmarks/pipeline_stages.py                         # the embedded synthetic set
    python benchmarks/pipeline_stages.py --data ../shared/data/imagenet-sample

Rows (images/s of ``pipe.run()`` after warm-up, same threads, batch 32; ratios to the full decode):
    decode                 fn.decoders.image, whole image (the decode-only floor of throughput.py)
    crop-decode            fn.decoders.image_random_crop: only the random crop window is decoded
    + resize               + fn.resize to 224x224, antialiased (what the loader does)
    + resize, no antialias + fn.resize without antialiasing
    + normalize            + crop_mirror_normalize to float CHW (the loader's whole training graph)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def seconds_per_batch(pipe, batches: int, repeats: int, warmup: int = 3) -> float:
    """A built pipeline's seconds per ``pipe.run()``: the median over ``repeats`` of ``batches`` runs,
    after ``warmup`` runs."""
    for _ in range(warmup):
        pipe.run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            pipe.run()
        times.append((time.perf_counter() - start) / batches)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="image folder (default: the embedded synthetic set)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", type=int, default=20, help="timed batches per repetition")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    from nvidia.dali import fn, pipeline_def, types

    from dali_resizer import make_synthetic_folder
    from dali_resizer.readers import ImageFolderSource

    files = ImageFolderSource.scan(a.data or make_synthetic_folder()).files
    size = [a.size, a.size]
    crop = lambda e: fn.decoders.image_random_crop(e, device="cpu", output_type=types.RGB)  # noqa: E731
    stages = {
        "decode": lambda e: fn.decoders.image(e, device="cpu", output_type=types.RGB),
        "crop-decode": crop,
        "+ resize": lambda e: fn.resize(crop(e), size=size, antialias=True),
        "+ resize, no antialias": lambda e: fn.resize(crop(e), size=size, antialias=False),
        "+ normalize": lambda e: fn.crop_mirror_normalize(fn.resize(crop(e), size=size, antialias=True),
                                                          dtype=types.FLOAT, output_layout="CHW",
                                                          mean=[124.0, 116.0, 104.0], std=[58.0, 57.0, 57.0]),
    }
    rates = {}
    for name, body in stages.items():
        @pipeline_def
        def graph(body=body):
            encoded, _ = fn.readers.file(files=files, random_shuffle=False, name="Reader")
            return body(encoded)

        pipe = graph(batch_size=a.batch_size, num_threads=a.threads, device_id=None, seed=0)
        pipe.build()
        rates[name] = a.batch_size / seconds_per_batch(pipe, a.batches, a.repeats)
        del pipe
    print(f"{len(files)} files, {a.threads} threads, batch {a.batch_size}")
    for name, rate in rates.items():
        print(f"  {name:<24} {rate:8.1f} img/s  {rate / rates['decode']:5.2f}x decode")
    return rates


if __name__ == "__main__":
    main()
