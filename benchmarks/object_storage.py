"""Shards in object storage against the same shards on local disk: DALI's direct S3 reads, and the
node-local shard cache (``dali_resizer.cache``), in one run on a loopback S3 server.

    python benchmarks/object_storage.py                                   # the embedded synthetic set
    python benchmarks/object_storage.py --data ../shared/data/imagenet-sample --latency-ms 0 20

A moto S3 server runs on 127.0.0.1, behind a small proxy (written here) that counts the requests and
adds ``--latency-ms`` to each, as a distant store would. The folder is written as shards (``shards
make``), once on local disk and once into the bucket. For each latency, each contender reads
``--epochs`` epochs with the same loader settings:

- ``local``: the shards on local disk (the baseline of each ratio);
- ``s3-direct``: ``cache=False``, DALI reading each member with ranged requests (at a real latency, only
  its first ``--direct-batches`` batches are timed: an epoch would take minutes);
- ``s3-cache``: through a fresh cache folder: epoch 1 downloads each tar whole, a span ahead; later
  epochs read the local copies;
- with ``--folders``: the image folder itself on local disk and under a prefix of the bucket, which
  DALI reads a file at a time (the same ratio's baseline: the local shards).

Printed per contender and epoch: images/s, the ratio to ``local`` in the same epoch, and requests per
sample seen by the proxy.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


class DelayingProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` that sleeps ``delay`` seconds before each
    request it forwards, and counts them."""

    def __init__(self, upstream_port: int) -> None:
        self.delay, self.requests, self._lock = 0.0, 0, threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                with proxy._lock:
                    proxy.requests += 1
                time.sleep(proxy.delay)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="image folder to write as shards (default: the embedded synthetic set)")
    p.add_argument("--samples-per-shard", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0])
    p.add_argument("--direct-batches", type=int, default=3, help="batches timed for s3-direct at a latency > 0")
    p.add_argument("--folders", action="store_true",
                   help="also the image folder itself, local and in the bucket (DALI reads each file: one request)")
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args(argv)

    from dali_resizer import DALILoader, make_synthetic_folder
    from dali_resizer.shards import write_shards

    work = Path(tempfile.mkdtemp(prefix="object-storage-"))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = None
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        proxy = DelayingProxy(port)
        os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                           "AWS_EC2_METADATA_DISABLED": "true", "DALI_RESIZER_CACHE": str(work / "user-cache")})
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        folder = a.data or make_synthetic_folder()
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
            proxy.delay = latency / 1e3
            contenders = {"local": dict(source=local), "s3-direct": dict(source=url, cache=False),
                          "s3-cache": dict(source=url, cache=work / f"cache-{latency:g}ms")}
            if a.folders:
                contenders |= {"folder-local": dict(source=folder), "folder-s3": dict(source="s3://bench/folder")}
            baseline = {}
            for name, extra in contenders.items():
                source = extra.pop("source")
                loader = DALILoader(source, **settings, **extra)
                limit = a.direct_batches if name in ("s3-direct", "folder-s3") and latency > 0 else None
                for epoch in range(a.epochs):
                    loader.set_epoch(epoch)
                    before, count, start = proxy.requests, 0, time.perf_counter()
                    for k, (images, _) in enumerate(loader):
                        count += images.shape[0]
                        if limit is not None and k + 1 >= limit:
                            break
                    seconds = time.perf_counter() - start
                    rate = count / seconds
                    if name == "local":
                        baseline[epoch] = rate
                    row = {"latency_ms": latency, "contender": name, "epoch": epoch + 1, "images": count,
                           "images_per_s": rate, "vs_local": rate / baseline[epoch],
                           "requests_per_sample": (proxy.requests - before) / count}
                    rows.append(row)
                    print(f"  {latency:5.0f} ms  {name:<10} epoch {epoch + 1}  {rate:8.1f} img/s  "
                          f"{row['vs_local']:5.2f}x local  {row['requests_per_sample']:6.2f} requests/sample"
                          + (f"  ({count} images timed)" if limit else ""))
                    if limit is not None:
                        break
                del loader
        report = {"samples": samples, "samples_per_shard": a.samples_per_shard, "batch_size": a.batch_size,
                  "size": a.size, "threads": a.threads, "rows": rows}
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
        return report
    finally:
        if proxy is not None:
            proxy.close()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
