"""The node-local shard cache (``dali_resizer.cache``) under the loader, against the loopback S3 server:
what it reads, what it keeps, what it shares, and what it does when things fail."""

import os
import threading
from pathlib import Path

import pytest

from dali_resizer import PAD_LABEL, DALILoader
from dali_resizer.cache import ShardCache, parse_bytes
from tests.conftest import upload, write_shards

COUNTS = [5, 4, 6, 5, 3, 5]  # 28 samples in 6 tars of odd sizes


@pytest.fixture
def bucket_shards(s3_bucket, tmp_path):
    """Six tars (labels i = sample i) with indexes and classes.txt in a bucket; their local twins."""
    client, bucket = s3_bucket
    local = tmp_path / "local"
    local.mkdir()
    write_shards(local, COUNTS, unique_labels=True)
    (local / "classes.txt").write_text("".join(f"c{i}\n" for i in range(sum(COUNTS))))
    from dali_resizer.readers.wds_index import build_index

    for tar in sorted(local.glob("*.tar")):
        build_index(tar, tar.with_suffix(".idx"))
    return client, bucket, upload(client, bucket, local, "shards"), local


def epoch_of(loader, epoch):
    loader.set_epoch(epoch)
    return [(int(y), int(i)) for _, labels, indices in loader for y, i in zip(labels, indices)]


def test_shards_in_a_bucket_are_read_from_local_copies_downloaded_once(bucket_shards, tmp_path):
    """Every sample once, with its label, in spans whose tars are local; a later epoch downloads nothing;
    the order is the same from one run to the next, and the copies are the objects' bytes."""
    client, bucket, url, local = bucket_shards
    make = dict(batch_size=3, size=8, shuffle=True, return_index=True, index_dir=tmp_path / "idx")
    loader = DALILoader(url, cache=tmp_path / "cache", **make)
    first = epoch_of(loader, 0)
    real = [(y, i) for y, i in first if y != PAD_LABEL]
    assert sorted(i for _, i in real) == list(range(sum(COUNTS))) and all(y == i for y, i in real)
    downloads = loader.cache.downloads
    assert downloads == 2 * len(COUNTS)  # (each tar and its index, once)
    copies = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.suffix in (".tar", ".idx"))
    assert len(copies) == 2 * len(COUNTS) and not list((tmp_path / "cache").glob("*.part.*"))
    for tar in local.glob("*.tar"):
        (copy,) = [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(f"-{tar.name}")]
        assert copy.read_bytes() == tar.read_bytes()
    second = epoch_of(loader, 1)
    assert loader.cache.downloads == downloads  # (all cached: no request for a tar or an index)
    assert sorted(i for y, i in second if y != PAD_LABEL) == list(range(sum(COUNTS))) and second != first
    again = DALILoader(url, cache=tmp_path / "cache", **make)
    assert epoch_of(again, 0) == first and again.cache.downloads == 0  # (another process: the node's copies)


def test_a_mid_epoch_resume_through_the_cache_is_exact(bucket_shards, tmp_path):
    """The epoch is read in spans (a pipeline each); a state saved inside a span or at a span's end
    resumes with the batches an uninterrupted run yields."""
    _, _, url, _ = bucket_shards
    make = dict(batch_size=2, size=8, shuffle=True, return_index=True, cache=tmp_path / "cache")
    whole = epoch_of(DALILoader(url, **make), 3)
    for stop in (1, 3, 6, 9):
        loader = DALILoader(url, **make)
        loader.set_epoch(3)
        it = iter(loader)
        head = [(int(y), int(i)) for _ in range(stop) for y, i in zip(*next(it)[1:])]
        state = loader.state_dict()
        resumed = DALILoader(url, **make)
        resumed.load_state_dict(state)
        rest = [(int(y), int(i)) for _, labels, indices in resumed for y, i in zip(labels, indices)]
        assert head + rest == whole, stop
    # resumed under a limit that cuts epochs into other spans (one tar each): the saved spans still hold
    resumed = DALILoader(url, **make, cache_limit=2 * max(COUNTS) * 4096)
    resumed.load_state_dict(state)
    rest = [(int(y), int(i)) for _, labels, indices in resumed for y, i in zip(labels, indices)]
    assert head + rest == whole


def test_the_cache_keeps_to_its_limit_and_never_evicts_what_is_pinned(bucket_shards, tmp_path):
    client, bucket, url, local = bucket_shards
    largest = max(p.stat().st_size for p in local.glob("*.tar"))
    loader = DALILoader(url, batch_size=3, size=8, shuffle=True, return_index=True, cache=tmp_path / "cache",
                        cache_limit=3 * largest)
    for epoch in range(2):
        seen = epoch_of(loader, epoch)
        assert sorted(i for y, i in seen if y != PAD_LABEL) == list(range(sum(COUNTS)))
        held = sum(p.stat().st_size for p in (tmp_path / "cache").iterdir() if p.suffix in (".tar", ".idx"))
        assert held <= 3 * largest
    assert loader.cache.downloads > 2 * len(COUNTS)  # (evicted copies were downloaded again)


def test_a_changed_object_is_a_new_copy_and_a_removed_folder_is_refilled(bucket_shards, tmp_path):
    client, bucket, url, local = bucket_shards
    cache = ShardCache(tmp_path / "cache")
    tar = f"{url}/train-000000.tar"
    first = cache.local(tar)
    write_shards(local / "new", [5], unique_labels=False) if (local / "new").mkdir() is None else None
    client.upload_file(str(local / "new" / "train-000000.tar"), bucket, "shards/train-000000.tar")
    fresh = ShardCache(tmp_path / "cache")  # (a new process: it asks the store for the object's ETag)
    second = fresh.local(tar)
    assert second != first and Path(second).read_bytes() == (local / "new" / "train-000000.tar").read_bytes()
    cache.unpin()
    fresh.unpin()
    import shutil

    shutil.rmtree(tmp_path / "cache")
    again = ShardCache(tmp_path / "cache")
    assert Path(again.local(tar)).read_bytes() == (local / "new" / "train-000000.tar").read_bytes()


def test_two_processes_download_a_shared_tar_once(bucket_shards, tmp_path):
    """Two caches on one folder (as two ranks of a node): each tar is downloaded by one of them."""
    _, _, url, _ = bucket_shards
    tars = [f"{url}/train-{k:06d}.tar" for k in range(len(COUNTS))]
    caches = [ShardCache(tmp_path / "cache") for _ in range(2)]
    barrier = threading.Barrier(2)

    def read(cache):
        barrier.wait()
        cache.prefetch(tars)
        return [cache.local(t) for t in tars]

    results = [None, None]
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, read(caches[k]))) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results[0] == results[1] and sum(c.downloads for c in caches) == len(tars)


def test_a_failed_download_is_a_named_connection_error_and_the_state_resumes(bucket_shards, tmp_path, monkeypatch):
    """The store goes away mid-epoch: the next span's download fails, named; the state resumes after it.
    (A limit of three tars makes each span one tar, two downloaded ahead: the fourth is still to come.)"""
    client, bucket, url, local = bucket_shards
    largest = max(p.stat().st_size for p in local.glob("*.tar"))
    make = dict(batch_size=3, size=8, shuffle=True, return_index=True, cache=tmp_path / "cache",
                cache_limit=3 * largest + 8192)
    whole = epoch_of(DALILoader(url, **{**make, "cache": tmp_path / "other"}), 0)
    loader = DALILoader(url, **make)
    loader.set_epoch(0)
    it = iter(loader)
    head = [(int(y), int(i)) for y, i in zip(*next(it)[1:])]
    loader.cache.retries = 2
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there: the store is gone
    monkeypatch.setenv("DALI_RESIZER_S3_RETRIES", "1")
    from dali_resizer import storage

    monkeypatch.setattr(storage._S3, "_client", None)
    with pytest.raises(ConnectionError, match=r"s3://.*\.(tar|idx): (download failed after 2 tries|cannot reach)"):
        for batch in it:
            head += [(int(y), int(i)) for y, i in zip(*batch[1:])]
    state = loader.state_dict()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the store is back
    monkeypatch.setattr(storage._S3, "_client", None)
    resumed = DALILoader(url, **make)
    resumed.load_state_dict(state)
    rest = [(int(y), int(i)) for _, labels, indices in resumed for y, i in zip(labels, indices)]
    assert head + rest == whole


def test_a_full_disk_is_named_and_leaves_nothing_half_written(bucket_shards, tmp_path):
    """The download's writes fail as on a full disk (a file-size limit, in a child process): the error
    names the cache folder and the object, and no copy or part file is left."""
    import subprocess
    import sys

    _, _, url, _ = bucket_shards
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from dali_resizer.cache import ShardCache\n"
        "try:\n    ShardCache(sys.argv[1]).local(sys.argv[2])\n    print('no error')\n"
        "except OSError as e:\n    print(f'{type(e).__name__}: {e}')\n")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache"), f"{url}/train-000002.tar"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=repo)
    assert done.stdout.startswith(f"OSError: [Errno 27] {tmp_path / 'cache'}: no room for {url}/train-000002.tar"), (
        done.stdout + done.stderr[-2000:])
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith((".dl", ".lock"))] == []


def test_a_process_killed_mid_download_leaves_nothing_a_later_run_trusts(bucket_shards, tmp_path):
    """A child process is killed (SIGKILL) with half a tar written: no copy has the tar's name, and the
    next cache on the folder removes the dead part and downloads the object whole."""
    import signal
    import subprocess
    import sys

    _, _, url, local = bucket_shards
    tar = f"{url}/train-000002.tar"
    script = (  # (its download writes half the object, then waits to be killed)
        "import sys, time\n"
        "from dali_resizer import storage\n"
        "def half(self, path, out, version=None):\n"
        "    out.write(self.read(path, 0, self.stat(path).size // 2)); out.flush()\n"
        "    print('half', flush=True); time.sleep(600)\n"
        "storage.S3Storage.download = half\n"
        "from dali_resizer.cache import ShardCache\n"
        "ShardCache(sys.argv[1]).local(sys.argv[2])\n")
    repo = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache"), tar], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(repo)}, cwd=repo)
    try:
        assert child.stdout.readline() == "half\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    left = [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith((".dl", ".lock"))]
    assert len(left) == 1 and ".part." in left[0].name and left[0].stat().st_size > 0  # (the dead part only)
    cache = ShardCache(tmp_path / "cache")
    assert not left[0].exists()
    copy = cache.local(tar)
    assert Path(copy).read_bytes() == (local / "train-000002.tar").read_bytes() and cache.downloads == 1


def test_byte_counts_read_as_people_write_them():
    assert parse_bytes("100GB") == 100 * 10**9 and parse_bytes("1.5 GiB") == 3 * 2**29 and parse_bytes(7) == 7
    with pytest.raises(ValueError, match="not a byte count"):
        parse_bytes("lots")


@pytest.mark.slow
def test_the_object_storage_benchmark_compares_local_direct_and_cached_reads(image_folder, tmp_path):
    """Run as a script (DALI's S3 client keeps the first endpoint it sees in a process): its own loopback
    store, a latency that the store's request count and the rows' arithmetic show."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "o.json"
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "object_storage.py"), "--data", str(image_folder),
                           "--samples-per-shard", "4", "--batch-size", "4", "--size", "16", "--epochs", "2",
                           "--latency-ms", "0", "5", "--direct-batches", "1", "--copies", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo), "DALI_RESIZER_CACHE": str(tmp_path / "c")})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    images = [p for p in Path(image_folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    assert report["samples"] == 2 * len(images)  # (--copies 2)
    rows = report["rows"]
    by = {(r["latency_ms"], r["contender"], r["epoch"]): r for r in rows}
    assert {name for _, name, _ in by} == {"local", "s3-direct", "s3-cache"}
    for latency in (0.0, 5.0):
        for epoch in (1, 2):
            local, cached = by[(latency, "local", epoch)], by[(latency, "s3-cache", epoch)]
            assert local["requests_per_sample"] == 0 and cached["vs_local"] == (
                cached["images_per_s"] / local["images_per_s"])
            assert cached["after_first_vs_local"] == (
                cached["after_first_images_per_s"] / local["after_first_images_per_s"])
            assert 0 < cached["first_batch_s"] < cached["images"] / cached["images_per_s"]
        assert by[(latency, "s3-cache", 2)]["requests_per_sample"] == 0  # (the second epoch reads the copies)
        assert by[(latency, "s3-cache", 1)]["requests_per_sample"] > 0
    assert by[(5.0, "s3-direct", 1)]["images"] == 4 and (5.0, "s3-direct", 2) not in by  # (one batch timed)
    assert by[(0.0, "s3-direct", 1)]["requests_per_sample"] >= 2  # (a request a component at least)


ODD = ["sp ace", "pct%41", "pl+us", "ünï", "emoji😀"]  # read as they are
MISREAD = ["q?v=2", "ha#sh"]  # DALI would read `q` and `ha`: decoys of those names are in the bucket


def _solid_png(value: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_keys_that_are_not_plain_in_an_image_folder(s3_bucket):
    """Space, %, +, unicode and emoji keys read their own objects; a folder holding '?' or '#' keys is
    refused, naming them (DALI would read the decoys `q` and `ha` in their place)."""
    client, bucket = s3_bucket
    for k, name in enumerate(ODD):
        client.put_object(Bucket=bucket, Key=f"f/c/{name}.png", Body=_solid_png(40 * (k + 1)))
    loader = DALILoader(f"s3://{bucket}/f", batch_size=len(ODD), size=16, return_index=True, mean=(0, 0, 0),
                        std=(1, 1, 1), cache=False)
    (images, _, indices), = list(loader)
    names = [loader.dataset.source.files[int(i)].rsplit("/", 1)[1][:-4] for i in indices]
    assert {name: round(float(img[0].mean()) * 255) for name, img in zip(names, images)} == {
        name: 40 * (k + 1) for k, name in enumerate(ODD)}
    for name in MISREAD:
        client.put_object(Bucket=bucket, Key=f"f/c/{name}.png", Body=_solid_png(250))
        client.put_object(Bucket=bucket, Key=f"f/c/{name[:name.index('?' if '?' in name else '#')]}", Body=b"decoy")
    with pytest.raises(ValueError, match=r"f/c/ha#sh\.png \(and 1 more\): a key holding '\?' or '#'"):
        DALILoader(f"s3://{bucket}/f", batch_size=2, size=16)


def test_keys_that_are_not_plain_in_shards(s3_bucket, tmp_path):
    """Tars named with every odd character read right through the cache (boto3 downloads them); read in
    place (cache=False), '?' and '#' are refused, naming the tar."""
    from dali_resizer.readers.wds_index import build_index

    client, bucket = s3_bucket
    local = tmp_path / "local"
    local.mkdir()
    tars = write_shards(local, [2] * (len(ODD) + len(MISREAD)), unique_labels=True)
    for tar, name in zip(tars, ODD + MISREAD):
        build_index(tar, tar.with_suffix(".idx"))
        for path in (tar, tar.with_suffix(".idx")):
            client.upload_file(str(path), bucket, f"s/{name}{path.suffix}")
    urls = [f"s3://{bucket}/s/{name}.tar" for name in ODD + MISREAD]
    loader = DALILoader(urls, batch_size=2, size=8, return_index=True, cache=tmp_path / "cache")
    assert sorted(int(y) for _, labels, _ in loader for y in labels) == list(range(2 * len(urls)))
    with pytest.raises(ValueError, match=r"s/q\?v=2\.tar \(and \d more\): a key holding .*through the cache"):
        DALILoader(urls, batch_size=2, size=8, cache=False)
    assert sorted(int(y) for _, labels in DALILoader(urls[:len(ODD)], batch_size=2, size=8, cache=False)
                  for y in labels) == list(range(2 * len(ODD)))


def test_the_default_limit_comes_from_the_environment_or_the_free_disk(tmp_path, monkeypatch):
    from dali_resizer.cache import default_cache_limit

    monkeypatch.delenv("DALI_RESIZER_CACHE_LIMIT", raising=False)
    free = __import__("shutil").disk_usage(tmp_path).free
    assert abs(default_cache_limit(tmp_path / "c", largest=1) - 0.8 * free) < 0.05 * free  # (others write too)
    with pytest.raises(OSError, match=rf"{tmp_path / 'c'}: .* GB free for the shard cache, less than three of the "
                                      rf"largest tars .*cache=False"):
        default_cache_limit(tmp_path / "c", largest=10**18)
    monkeypatch.setenv("DALI_RESIZER_CACHE_LIMIT", "2GB")
    assert default_cache_limit(tmp_path / "c", largest=10**18) == 2 * 10**9
