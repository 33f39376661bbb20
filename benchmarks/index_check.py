"""What the loader's check of a local tar's index costs: ``index_mismatch`` (every row against the tar's
headers, at the tar's first read) against rebuilding the index from the tar (``build_index``, what
``shards verify`` does), and against reading the tar's bytes once (a lower bound of decoding it).

    python benchmarks/index_check.py                                   # 1,000 samples of 110 KB
    python benchmarks/index_check.py --samples 1000 --image-bytes 110000 --repeats 5

A tar of ``--samples`` samples (an image of ``--image-bytes`` random bytes and a ``.cls`` each) is written
to a temporary folder; each contender runs ``--repeats`` times with the file in the page cache, and the
median is printed with its ratio to the check.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--image-bytes", type=int, default=110_000, help="size of each sample's image member")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args(argv)

    from dali_resizer.readers.wds_index import build_index, index_mismatch

    with tempfile.TemporaryDirectory() as tmp:
        tar_path, index_path = os.path.join(tmp, "shard.tar"), os.path.join(tmp, "shard.idx")
        image = os.urandom(a.image_bytes)
        with tarfile.open(tar_path, "w") as tar:
            for i in range(a.samples):
                for ext, data in (("jpg", image), ("cls", str(i % 1000).encode())):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        build_index(tar_path, index_path)

        def read_whole():
            with open(tar_path, "rb") as f:
                while f.read(8 << 20):
                    pass

        contenders = {
            "index_mismatch": lambda: index_mismatch(tar_path, index_path),
            "build_index": lambda: build_index(tar_path, os.path.join(tmp, "rebuilt.idx")),
            "read_whole_tar": read_whole,
        }
        assert index_mismatch(tar_path, index_path) is None
        seconds = {}
        for name, run in contenders.items():
            run()  # (warm: the tar in the page cache)
            times = []
            for _ in range(a.repeats):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            seconds[name] = statistics.median(times)
        size = os.path.getsize(tar_path)
    rows = {name: {"ms": 1e3 * s, "vs_index_mismatch": s / seconds["index_mismatch"]} for name, s in seconds.items()}
    report = {"samples": a.samples, "tar_bytes": size, "repeats": a.repeats, "rows": rows}
    print(f"a tar of {a.samples} samples, {size / 1e6:.1f} MB, in the page cache; median of {a.repeats}")
    for name, row in rows.items():
        print(f"  {name:<16} {row['ms']:8.2f} ms  {row['vs_index_mismatch']:6.2f}x index_mismatch")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
