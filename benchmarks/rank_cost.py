"""What one rank pays at start-up, against the data set's size: the split by tar against DALI's own split.

    python benchmarks/rank_cost.py --worlds 64 512 --shards 1000 10000 100000

Simulates one rank (rank 0) of a world of W ranks over N shards in this process: N tiny tars (hard
links to one tar of --samples-per-shard samples), each with its DALI index, and the manifest that
``shards make`` writes. For each (W, N), two designs, each timed from nothing to its first batch:

  by-tar     the loader as it is: it reads the manifest, takes this rank's run of the epoch (whole tars
             and at most two parts of tars, through sub-indexes) and builds a pipeline over those tars
             only, so DALI parses only their indexes
  all-tars   every rank's pipeline gets every tar and index and DALI splits the samples (shard_id /
             num_shards), as the loader did before: each rank parses all N indexes

Printed per row: the rank's tars, the index bytes its pipeline parses (DALI keeps ~the same in
memory), start-up seconds, and the ratios all-tars / by-tar. By-tar should be flat in N at a fixed
number of tars per rank; all-tars grows with N, and fails where the tars outnumber the open-file
limit (DALI opens every tar of its pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # (the startup benchmark's tiny tars)


def make_set(root: Path, count: int, per_shard: int) -> list[str]:
    """``count`` tars (hard links to one) with their indexes and a manifest; returns the tar paths."""
    from startup import write_tiny_shards

    from dali_resizer.readers.wds_index import build_index

    (template,) = write_tiny_shards(root, 1, per_shard)
    samples = build_index(template, template.with_suffix(".idx"))
    index_text = template.with_suffix(".idx").read_text()
    paths, source = [str(template)], template
    for s in range(1, count):
        tar = root / f"train-{s:06d}.tar"
        if s % 60000 == 0:  # (a file system allows so many links to one file)
            shutil.copyfile(template, tar)
            source = tar
        else:
            os.link(source, tar)
        tar.with_suffix(".idx").write_text(index_text)
        paths.append(str(tar))
    size = template.stat().st_size
    shards = [{"tar": Path(p).name, "samples": samples, "bytes": size} for p in paths]
    (root / "manifest.json").write_text(json.dumps({"format": "dali_resizer shards v1", "classes": None,
                                                    "shards": shards}))
    return paths


def by_tar(paths: list[str], world: int, batch_size: int) -> dict:
    from dali_resizer import DALILoader

    t0 = time.perf_counter()
    loader = DALILoader(paths, batch_size=batch_size, size=16, num_threads=1, device="cpu", shard_id=0,
                        num_shards=world, train=False)
    pieces = loader._reader.epoch_pieces(loader.sampler.due())
    next(iter(loader))
    seconds = time.perf_counter() - t0
    parsed = sum(os.path.getsize(paths[i][: -len(".tar")] + ".idx") * (stop - start) // loader.dataset.counts[i]
                 for i, start, stop in pieces)
    return {"tars": len(pieces), "index_bytes": parsed, "seconds": seconds}


def all_tars(paths: list[str], world: int, batch_size: int) -> dict:
    """Listing as without a manifest (every index's staleness and header) and DALI's own split."""
    import pipelines
    from dali_resizer.readers import ShardSource
    from dali_resizer.spec import TransformSpec

    manifest = Path(paths[0]).with_name("manifest.json")
    manifest.rename(manifest.with_suffix(".away"))
    t0 = time.perf_counter()
    index_paths = ShardSource.from_paths(paths).index_paths
    pipe = pipelines.webdataset_pipeline(paths, index_paths, spec=TransformSpec((16, 16), False), shard_id=0,
                                         num_shards=world,
                                         batch_size=batch_size, num_threads=1, device_id=None, seed=0)
    try:
        pipe.build()
        pipe.run()
        error = None
    except RuntimeError as e:  # (DALI opens every tar: past the open-file limit it cannot start)
        error = next((line.strip() for line in str(e).splitlines() if "Could not open" in line), str(e)[-200:])
    seconds = time.perf_counter() - t0
    manifest.with_suffix(".away").rename(manifest)
    return {"tars": len(paths), "index_bytes": sum(os.path.getsize(p) for p in index_paths), "seconds": seconds,
            "error": error}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", type=int, nargs="+", default=[64, 512])
    p.add_argument("--shards", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--samples-per-shard", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json")
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:  # warm-up: DALI's one-time setup, the graphs' conversion
        paths = make_set(Path(tmp), 4, a.samples_per_shard)
        by_tar(paths, 2, a.batch_size), all_tars(paths, 2, a.batch_size)
    rows = []
    print(f"{'world':>6} {'shards':>7} | {'by-tar: tars':>12} {'index B':>9} {'s':>7} | "
          f"{'all-tars: tars':>14} {'index B':>10} {'s':>7} | {'bytes x':>8} {'time x':>7}")
    for count in a.shards:
        with tempfile.TemporaryDirectory() as tmp:
            paths = make_set(Path(tmp), count, a.samples_per_shard)
            for world in a.worlds:
                new, old = by_tar(paths, world, a.batch_size), all_tars(paths, world, a.batch_size)
                row = {"world": world, "shards": count, "by_tar": new, "all_tars": old,
                       "index_bytes_ratio": old["index_bytes"] / max(new["index_bytes"], 1),
                       "seconds_ratio": None if old["error"] else old["seconds"] / new["seconds"]}
                rows.append(row)
                old_s = f"{old['seconds']:>7.3f}" if not old["error"] else "  fails"
                ratio = f"{row['seconds_ratio']:>7.1f}" if row["seconds_ratio"] else "      -"
                print(f"{world:>6} {count:>7} | {new['tars']:>12} {new['index_bytes']:>9} {new['seconds']:>7.3f} | "
                      f"{old['tars']:>14} {old['index_bytes']:>10} {old_s} | "
                      f"{row['index_bytes_ratio']:>8.1f} {ratio}" + (f"  ({old['error']})" if old["error"] else ""),
                      flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"samples_per_shard": a.samples_per_shard, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
