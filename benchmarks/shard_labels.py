"""What the shard reader's per-batch bookkeeping costs the host, against the loader's own batch time.

    python benchmarks/shard_labels.py                          # shards of the embedded synthetic set
    python benchmarks/shard_labels.py --data ../shared/data/imagenet-sample --batch-size 256

Each shard batch's labels pass through ``ShardReader.labels`` on the Python thread that calls
``next()``: the ``.cls`` digits to integers, and every row's DALI source name (``tar:offset:member``)
to its sample id, which the loader records for ``state_dict()`` (resume in any world size) and
``return_index``. On a GPU host this is host time between training steps, so it should stay a small
part of a batch. Printed: that cost per batch and per sample (median of --repeats over a batch taken
from a real epoch), and as a fraction of one batch of the loader's epoch, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="image folder to write shards of (default: the embedded synthetic set)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--calls", type=int, default=200, help="timed calls per repetition")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args(argv)

    from dali_resizer import DALILoader, make_synthetic_folder
    from dali_resizer.readers import webdataset

    root = a.data or make_synthetic_folder()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "dali_resizer.shards", "make", str(root), f"{tmp}/s",
                        "--samples-per-shard", "100"], check=True, capture_output=True)
        loader = DALILoader(f"{tmp}/s", batch_size=a.batch_size, size=a.size, train=False, shuffle=False,
                            device="cpu", num_threads=a.threads)
        batches = []
        labels = webdataset.ShardReader.labels

        def keep(reader, out):
            batches.append((reader, {k: v.clone() for k, v in out.items()}))
            return labels(reader, out)

        webdataset.ShardReader.labels = keep
        try:
            list(loader)  # (the first epoch: build, warm-up, and the batches to time labels() on)
        finally:
            webdataset.ShardReader.labels = labels
        start = time.perf_counter()
        samples = sum(len(y) for _, y in loader)
        batch_s = (time.perf_counter() - start) / len(loader)

        reader, out = batches[0]
        rows = out["status"].numel()
        reader.track = lambda ids: None  # (one batch timed many times: its delivery is not recorded again)
        times = []
        for _ in range(a.repeats):
            start = time.perf_counter()
            for _ in range(a.calls):
                reader.labels(out)
            times.append((time.perf_counter() - start) / a.calls)
        labels_s = statistics.median(times)
    report = {"samples": samples, "batch_size": rows, "threads": a.threads, "size": a.size,
              "labels_ms_per_batch": 1e3 * labels_s, "labels_us_per_sample": 1e6 * labels_s / rows,
              "loader_ms_per_batch": 1e3 * batch_s, "fraction_of_batch": labels_s / batch_s}
    print(f"{samples} samples from {root}, batch {rows}, {a.threads} threads, size {a.size}, CPU decode")
    print(f"  ShardReader.labels  {report['labels_ms_per_batch']:8.3f} ms/batch  "
          f"({report['labels_us_per_sample']:.1f} us a sample)")
    print(f"  loader, one batch   {report['loader_ms_per_batch']:8.1f} ms/batch  "
          f"-> labels are {100 * report['fraction_of_batch']:.2f}% of it")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
