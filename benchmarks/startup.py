"""Startup cost against shard count: index building, loader construction, first batch.

    python benchmarks/startup.py --shards 10 100 1000 5000 --samples-per-shard 8

Writes N tiny WebDataset shards (the same small JPEG in every sample: this measures per-shard and
per-sample bookkeeping, not decoding), then times, for each N:
  index build      writing the DALI index of every tar (``shards index``, or the loader's cache on
                   first use), once per data set
  loader init      ``DALILoader(...)`` with the indexes present: listing, the staleness check of every
                   index, reading its sample count
  first batch      ``next(iter(loader))``: building the DALI pipeline (which opens every tar and parses
                   every index) and decoding one batch
Results as a table and, with ``--json``, a file; ratios are against the smallest N of the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def write_tiny_shards(root: Path, count: int, per_shard: int) -> list[Path]:
    import webdataset as wds
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (120, 80, 40)).save(buf, format="JPEG")
    image = buf.getvalue()
    paths = []
    for s in range(count):
        path = root / f"train-{s:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                sink.write({"__key__": f"{s:06d}-{i:04d}", "jpg": image, "cls": str(i % 10).encode()})
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, nargs="+", default=[10, 100, 1000, 5000])
    p.add_argument("--samples-per-shard", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json")
    a = p.parse_args(argv)

    from dali_resizer import DALILoader
    from dali_resizer.readers.wds_index import build_index

    with tempfile.TemporaryDirectory() as tmp:  # warm-up: DALI's and the decoder's one-time setup
        for tar in write_tiny_shards(Path(tmp), 1, a.samples_per_shard):
            build_index(tar, tar.with_suffix(".idx"))
        next(iter(DALILoader(tmp, batch_size=a.batch_size, shuffle=True, size=16, num_threads=1, device="cpu")))
    rows = []
    for count in a.shards:
        with tempfile.TemporaryDirectory() as tmp:
            tars = write_tiny_shards(Path(tmp), count, a.samples_per_shard)
            t0 = time.perf_counter()
            for tar in tars:
                build_index(tar, tar.with_suffix(".idx"))
            t1 = time.perf_counter()
            loader = DALILoader(tmp, batch_size=a.batch_size, shuffle=True, size=16, num_threads=1, device="cpu")
            t2 = time.perf_counter()
            next(iter(loader))
            t3 = time.perf_counter()
            index_bytes = sum(t.with_suffix(".idx").stat().st_size for t in tars)
        rows.append({"shards": count, "samples": count * a.samples_per_shard, "index_build_s": t1 - t0,
                     "loader_init_s": t2 - t1, "first_batch_s": t3 - t2, "index_bytes": index_bytes})
    base = rows[0]
    print(f"{'shards':>7} {'samples':>8} {'index build s':>14} {'loader init s':>14} {'first batch s':>14} "
          f"{'index KiB':>10}  (x vs {base['shards']} shards)")
    for r in rows:
        ratio = r["index_build_s"] / base["index_build_s"]
        print(f"{r['shards']:>7} {r['samples']:>8} {r['index_build_s']:>9.3f} ({ratio:4.0f}x)"
              f" {r['loader_init_s']:>8.3f} ({r['loader_init_s'] / base['loader_init_s']:4.0f}x)"
              f" {r['first_batch_s']:>8.3f} ({r['first_batch_s'] / base['first_batch_s']:4.0f}x)"
              f" {r['index_bytes'] / 1024:>10.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
