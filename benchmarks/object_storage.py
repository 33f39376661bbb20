"""Shards in object storage against the same shards on local disk: DALI's direct S3 reads, and the
node-local shard cache (``dali_resizer.cache``), in one run on a loopback S3 server.

    python benchmarks/object_storage.py                                   # the embedded synthetic set
    python benchmarks/object_storage.py --data ../shared/data/imagenet-sample --latency-ms 0 20
    python benchmarks/object_storage.py --data ../shared/data/imagenet-sample --copies 8 \
        --samples-per-shard 1000 --contenders local s3-cache      # shards of a usual size (1,000 samples)

A moto S3 server runs on 127.0.0.1 in a process of its own, behind a WSGI layer (written here) that
counts the requests and holds each one ``--latency-ms``, as a distant store would. The folder is
written as shards (``shards make``), once on local disk and once into the bucket. For each latency, each contender reads
``--epochs`` epochs with the same loader settings:

- ``local``: the shards on local disk (the baseline of each ratio);
- ``s3-direct``: ``cache=False``, DALI reading each member with ranged requests (at a real latency, only
  its first ``--direct-batches`` batches are timed: an epoch would take minutes);
- ``s3-cache``: through a fresh cache folder: epoch 1 downloads each tar whole, a span ahead; later
  epochs read the local copies;
- with ``--folders``: the image folder itself on local disk and under a prefix of the bucket, which
  DALI reads a file at a time (the same ratio's baseline: the local shards).

Printed per contender and epoch: images/s, the ratio to ``local`` in the same epoch; the seconds to the
first batch and the ratio to ``local`` of the rate after it (epoch 1 through the cache: once the first tar
has arrived); and requests per sample seen by the store.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


# The store: moto's S3 app behind a WSGI layer that holds each request `delay` seconds and counts them;
# `/_bench/delay?ms=N` sets the delay, `/_bench/requests` says the count (neither is counted).
SERVER = """
import sys, threading, time
from urllib.parse import parse_qs
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

app, state, lock = DomainDispatcherApplication(create_backend_app), {"delay": 0.0, "requests": 0}, threading.Lock()

def store(environ, start_response):
    if environ["PATH_INFO"].startswith("/_bench/"):
        if environ["PATH_INFO"] == "/_bench/delay":
            state["delay"] = float(parse_qs(environ["QUERY_STRING"])["ms"][0]) / 1e3
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(state["requests"]).encode()]
    with lock:
        state["requests"] += 1
    time.sleep(state["delay"])
    return app(environ, start_response)

run_simple("127.0.0.1", int(sys.argv[1]), store, threaded=True)
"""


class Store:
    """The loopback S3 server of the benchmark (see ``SERVER``), in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, str(self.port)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                self._ask("requests")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the S3 server did not start")

    def _ask(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.endpoint}/_bench/{path}", timeout=10) as response:
            return response.read().decode()

    @property
    def requests(self) -> int:
        return int(self._ask("requests"))

    def set_latency(self, ms: float) -> None:
        self._ask(f"delay?ms={ms}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def linked_copies(folder: str | os.PathLike, out: Path, copies: int) -> Path:
    """An image folder holding each image of ``folder`` ``copies`` times, as symbolic links."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.parent != Path(folder):
            (out / path.parent.name).mkdir(parents=True, exist_ok=True)
            for k in range(copies):
                (out / path.parent.name / f"{path.stem}-{k}{path.suffix}").symlink_to(path.resolve())
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="image folder to write as shards (default: the embedded synthetic set)")
    p.add_argument("--samples-per-shard", type=int, default=100)
    p.add_argument("--copies", type=int, default=1,
                   help="each image this many times (as links, under other names): a set big enough for shards of "
                        "a usual size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0])
    p.add_argument("--direct-batches", type=int, default=3, help="batches timed for s3-direct at a latency > 0")
    p.add_argument("--folders", action="store_true",
                   help="also the image folder itself, local and in the bucket (DALI reads each file: one request)")
    p.add_argument("--contenders", nargs="+", help="run only these (the ratios need local)")
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args(argv)

    from dali_resizer import DALILoader, make_synthetic_folder
    from dali_resizer.shards import write_shards

    work = Path(tempfile.mkdtemp(prefix="object-storage-"))
    store = Store()
    try:
        os.environ.update({"AWS_ENDPOINT_URL": store.endpoint, "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                           "DALI_RESIZER_CACHE": str(work / "user-cache")})
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        folder = a.data or make_synthetic_folder()
        if a.copies > 1:
            folder = linked_copies(folder, work / "copies", a.copies)
        local = work / "shards"
        write_shards(folder, local, samples_per_shard=a.samples_per_shard, prefix="train")
        url = "s3://bench/shards"
        write_shards(folder, url, samples_per_shard=a.samples_per_shard, prefix="train")
        if a.folders:  # (the folder's files under a prefix, as they are on disk)
            client = boto3.client("s3")
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file():
                    client.upload_file(str(path), "bench", f"folder/{path.relative_to(folder).as_posix()}")
        settings = dict(batch_size=a.batch_size, size=a.size, shuffle=True, num_threads=a.threads, device="cpu")
        samples = len(DALILoader(local, **settings).dataset)
        print(f"{samples} samples in {-(-samples // a.samples_per_shard)} tars from {folder}; batch {a.batch_size}, "
              f"size {a.size}, {a.threads} threads, CPU decode")
        rows = []
        for latency in a.latency_ms:
            store.set_latency(latency)
            contenders = {"local": dict(source=local), "s3-direct": dict(source=url, cache=False),
                          "s3-cache": dict(source=url, cache=work / f"cache-{latency:g}ms")}
            if a.folders:
                contenders |= {"folder-local": dict(source=folder), "folder-s3": dict(source="s3://bench/folder")}
            baseline = {}
            for name, extra in contenders.items():
                if a.contenders and name not in a.contenders and name != "local":
                    continue
                source = extra.pop("source")
                loader = DALILoader(source, **settings, **extra)
                limit = a.direct_batches if name in ("s3-direct", "folder-s3") and latency > 0 else None
                for epoch in range(a.epochs):
                    loader.set_epoch(epoch)
                    before, count, start = store.requests, 0, time.perf_counter()
                    first = first_count = None
                    for k, (images, _) in enumerate(loader):
                        count += images.shape[0]
                        if first is None:
                            first, first_count = time.perf_counter(), count
                        if limit is not None and k + 1 >= limit:
                            break
                    end = time.perf_counter()
                    rate = count / (end - start)
                    after = (count - first_count) / (end - first) if count > first_count else float("nan")
                    if name == "local":
                        baseline[epoch] = (rate, after)
                    row = {"latency_ms": latency, "contender": name, "epoch": epoch + 1, "images": count,
                           "images_per_s": rate, "vs_local": rate / baseline[epoch][0],
                           "first_batch_s": first - start, "after_first_images_per_s": after,
                           "after_first_vs_local": after / baseline[epoch][1],
                           "requests_per_sample": (store.requests - before) / count}
                    rows.append(row)
                    print(f"  {latency:5.0f} ms  {name:<10} epoch {epoch + 1}  {rate:8.1f} img/s  "
                          f"{row['vs_local']:5.2f}x local  first batch {row['first_batch_s']:6.2f} s  then "
                          f"{row['after_first_vs_local']:5.2f}x local  "
                          f"{row['requests_per_sample']:6.2f} requests/sample"
                          + (f"  ({count} images timed)" if limit else ""))
                    if limit is not None:
                        break
                del loader
                gc.collect()  # (a loader stopped early: its pipeline's prefetching ends before the next runs)
        report = {"samples": samples, "samples_per_shard": a.samples_per_shard, "batch_size": a.batch_size,
                  "size": a.size, "threads": a.threads, "rows": rows}
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
        return report
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
