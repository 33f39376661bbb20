"""Sources in object storage: a real S3 protocol server (moto) on 127.0.0.1, read by DALI's own S3
client and by the project's listing and ranged reads (boto3), with the standard AWS configuration."""

import numpy as np
import pytest
import torch

from dali_resizer import DALILoader
from dali_resizer.readers.wds_index import build_index
from tests.conftest import encode, random_image, upload, write_shards


def one_pass(loader):
    images, labels, indices = zip(*loader)
    return torch.cat(images), torch.cat(labels), torch.cat(indices)


def test_an_image_folder_under_a_prefix_is_the_local_folder(image_folder, s3_bucket):
    client, bucket = s3_bucket
    url = upload(client, bucket, image_folder, "imagenet/train")
    kw = dict(batch_size=4, size=16, train=False, return_index=True, device="cpu")
    local, remote = DALILoader(image_folder, **kw), DALILoader(url, **kw)
    assert remote.classes == local.classes and remote.dataset.targets == local.dataset.targets
    assert [f.replace(url, str(image_folder)) for f in remote.dataset.files] == local.dataset.files
    for got, want in zip(one_pass(remote), one_pass(local)):
        assert torch.equal(got, want)  # the same images, labels and order, read over S3


@pytest.mark.parametrize("form", ["prefix", "brace", "list"])
def test_shards_in_a_bucket_are_the_local_shards(tmp_path, s3_bucket, form):
    client, bucket = s3_bucket
    paths = write_shards(tmp_path, [5, 3, 4], unique_labels=True)
    for path in paths:
        build_index(path, path.with_suffix(".idx"))
    url = upload(client, bucket, tmp_path, "shards")
    source = {"prefix": url, "brace": f"{url}/train-{{000000..000002}}.tar",
              "list": [f"{url}/{p.name}" for p in paths]}[form]
    kw = dict(batch_size=3, size=8, shuffle=False, return_index=True, device="cpu", index_dir=tmp_path / "cache")
    remote, local = DALILoader(source, **kw), DALILoader(paths, **kw)
    assert remote.dataset.index_paths[0].startswith("s3://")  # the index beside the tar, read where it is
    got, want = one_pass(remote), one_pass(local)
    assert torch.equal(got[0], want[0]) and got[1].tolist() == got[2].tolist() == list(range(12))


def test_a_tar_without_index_is_indexed_once_into_the_cache(tmp_path, s3_bucket):
    client, bucket = s3_bucket
    (tmp_path / "data").mkdir()
    write_shards(tmp_path / "data", [4, 2], unique_labels=True)
    url = upload(client, bucket, tmp_path / "data", "noidx")
    cache = tmp_path / "cache"
    loader = DALILoader(url, batch_size=2, size=8, shuffle=False, index_dir=cache)
    built = sorted(cache.glob("*.idx"))
    assert len(built) == 2 and sorted(y for _, lab in loader for y in lab.tolist()) == list(range(6))
    stamps = [p.stat().st_mtime_ns for p in built]
    DALILoader(url, batch_size=2, size=8, index_dir=cache)
    assert [p.stat().st_mtime_ns for p in sorted(cache.glob("*.idx"))] == stamps  # keyed by URL, size, ETag
    client.put_object(Bucket=bucket, Key="noidx/train-000001.tar", Body=(tmp_path / "data" / "train-000000.tar")
                      .read_bytes())  # a new object under the same URL: a new index
    DALILoader(url, batch_size=2, size=8, index_dir=cache)
    assert len(list(cache.glob("*.idx"))) == 3


def test_a_bad_image_in_a_bucket_is_named_by_its_url(image_folder, s3_bucket):
    client, bucket = s3_bucket
    url = upload(client, bucket, image_folder, "data")
    client.put_object(Bucket=bucket, Key="data/dog/zz_bad.jpg", Body=b"<html>404</html>")
    loader = DALILoader(url, batch_size=4, size=8, on_error="skip", shuffle=False)
    with pytest.warns(UserWarning, match="zz_bad.jpg"):
        labels = [y for _, lab in loader for y in lab.tolist()]
    assert labels.count(-100) == 1 and list(loader.skipped) == [f"{url}/dog/zz_bad.jpg"]
    assert "HTML/XML text" in loader.skipped[f"{url}/dog/zz_bad.jpg"]


def test_check_lists_an_image_folder_in_a_bucket_as_the_loader_does(image_folder, s3_bucket, tmp_path, capsys):
    """``check`` on an ``s3://`` folder: the listing the loader uses (one), each problem named by its URL,
    and ``--write-list`` a list of the good images that the loader reads from the bucket."""
    from dali_resizer.check import main as check

    client, bucket = s3_bucket
    url = upload(client, bucket, image_folder, "data")
    client.put_object(Bucket=bucket, Key="data/dog/zz_bad.jpg", Body=b"<html>404</html>")
    listed = tmp_path / "good.txt"
    assert check([url, "--write-list", str(listed)]) == 1
    out = capsys.readouterr().out
    assert f"{url}/dog/zz_bad.jpg: HTML/XML text, not an image" in out
    assert f"{url}/cat/notes.txt" in out and f"{url}/README" in out  # (ignored files, named as the loader skips them)
    loader = DALILoader(str(listed), batch_size=4, size=8, shuffle=False, return_index=True)
    assert len(loader.dataset) == 11 and loader.classes == ["cat", "dog", "emu"]
    assert len([i for _, _, idx in loader for i in idx.tolist()]) == 11


def test_verify_and_check_read_shards_in_a_bucket_as_the_loader_does(image_folder, s3_bucket, tmp_path, capsys):
    """``shards verify`` and ``check`` on an ``s3://`` prefix of shards: each tar read whole (not a request a
    member), each problem named by its URL."""
    from dali_resizer.check import main as check
    from dali_resizer.shards import main as shards
    from tests.test_robustness import _jpeg_with_a_bogus_huffman_table

    client, bucket = s3_bucket
    url = f"s3://{bucket}/shards/train"
    assert shards(["make", str(image_folder), url, "--samples-per-shard", "4", "--prefix", "train"]) == 0
    assert shards(["verify", url]) == 0 and check([url]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ok"
    import webdataset as wds

    local = tmp_path / "train-000000.tar"  # (a tar replaced behind the manifest's back)
    with wds.TarWriter(str(local)) as sink:
        sink.write({"__key__": "good", "jpg": encode(random_image(np.random.default_rng(0), 20, 20)), "cls": b"1"})
        sink.write({"__key__": "bogus", "jpg": _jpeg_with_a_bogus_huffman_table(), "cls": b"7"})
    client.upload_file(str(local), bucket, "shards/train/train-000000.tar")
    assert shards(["verify", url]) == 1
    out = capsys.readouterr().out
    size = client.head_object(Bucket=bucket, Key="shards/train/train-000000.tar")["ContentLength"]
    assert f"bytes listed, {size} in the tar" in out and f"stale index: 1\n  {url}/train-000000.idx: " in out
    assert f"{url}/train-000000.tar: bogus (label 7 is out of range for the 3 classes of classes.txt)" in out
    assert check([url]) == 1
    out = capsys.readouterr().out
    assert f"{url}/train-000000.tar: bogus.jpg: JPEG image; DALI: " in out and "Bogus Huffman table" in out


def test_missing_objects_and_wrong_credentials_are_named(s3_bucket, monkeypatch, capsys):
    from dali_resizer import storage

    _, bucket = s3_bucket
    with pytest.raises(FileNotFoundError, match=f"source not found: s3://{bucket}/nothing"):
        DALILoader(f"s3://{bucket}/nothing", batch_size=2)
    with pytest.raises(FileNotFoundError, match=f"shard not found: s3://{bucket}/a.tar"):
        DALILoader([f"s3://{bucket}/a.tar"], batch_size=2)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("DALI_RESIZER_S3_RETRIES", "1")
    monkeypatch.setenv("DALI_RESIZER_S3_TIMEOUT", "2")
    monkeypatch.setattr(storage._S3, "_client", None)
    with pytest.raises(ConnectionError, match=f"s3://{bucket}/x: cannot reach http://127.0.0.1:9"):
        DALILoader(f"s3://{bucket}/x", batch_size=2)
    from dali_resizer.check import main as check
    from dali_resizer.shards import main as shards

    for tool in (check, lambda argv: shards(["verify", *argv])):  # (an error line and exit 2, no traceback)
        assert tool([f"s3://{bucket}/x"]) == 2
        assert f"error: s3://{bucket}/x: cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_the_server_stopping_mid_epoch_is_named_and_the_state_resumes_after(tmp_path, s3_bucket, s3_server):
    import boto3

    from dali_resizer import storage

    paths = write_shards(tmp_path, [6, 6], unique_labels=True)
    for path in paths:
        build_index(path, path.with_suffix(".idx"))
    client, bucket = s3_bucket
    url = upload(client, bucket, tmp_path, "shards")
    # (DALI reading in place: tests/test_cache.py has the cache's own failure)
    kw = dict(batch_size=2, size=8, shuffle=False, prefetch_queue_depth=1, index_dir=tmp_path / "cache", cache=False)
    whole = [lab.tolist() for _, lab in DALILoader(url, **kw)]
    loader = DALILoader(url, **kw)
    batches = iter(loader)
    head = [next(batches)[1].tolist()]
    state = loader.state_dict()
    s3_server.stop()
    try:
        with pytest.raises(ConnectionError, match=f"2 shards at {url}/train-000000.tar: reading stopped after batch "):
            for _, labels in batches:
                head.append(labels.tolist())
        after = loader.state_dict()  # taken after the error: where it stopped
    finally:
        s3_server.start()  # (empty: the objects are put back)
    storage._S3._client = None
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    upload(client, bucket, tmp_path, "shards")
    for saved, done in ((state, head[:1]), (after, head)):
        resumed = DALILoader(url, **kw)
        resumed.load_state_dict(saved)
        assert done + [lab.tolist() for _, lab in resumed] == whole


def test_refused_credentials_are_named(s3_bucket, monkeypatch):
    """A server that checks credentials (moto with IAM authentication on) refuses the test keys."""
    from dali_resizer import storage
    from tests.conftest import S3Server

    server = S3Server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    server.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        monkeypatch.setattr(storage._S3, "_client", None)
        with pytest.raises(PermissionError, match="s3://locked-bucket/data: access denied .*check the credentials"):
            DALILoader("s3://locked-bucket/data", batch_size=2)  # (refused by the listing, before DALI)
    finally:
        server.stop()


def test_a_tar_cut_short_in_the_bucket_is_read_up_to_the_cut(tmp_path, s3_bucket):
    client, bucket = s3_bucket
    (tmp_path / "data").mkdir()
    tar = write_shards(tmp_path / "data", [4], unique_labels=True)[0]
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) - 2048 - 600])  # (the end blocks, and into the last image)
    url = upload(client, bucket, tmp_path / "data", "cut")
    with pytest.warns(UserWarning) as record:
        loader = DALILoader(url, batch_size=2, size=8, shuffle=False, on_error="skip", index_dir=tmp_path / "cache")
        labels = sorted(y for _, lab in loader for y in lab.tolist())
    assert any("cut short" in str(w.message) for w in record)
    assert labels == [-100, 0, 1, 2] and "sample-00003" in next(iter(loader.skipped))


@pytest.mark.slow
def test_shards_in_a_bucket_on_two_ranks_exactly_once(tmp_path, s3_bucket, monkeypatch):
    """Two ranks of one node read a bucket's shards through the node's cache: every sample once, and each
    tar (the 6-sample one both ranks read part of, and the other) downloaded once. (Their indexes are built
    from the tars into the index cache.)"""
    from dali_resizer.samples import PAD_LABEL
    from tests.test_distributed import check, torchrun

    client, bucket = s3_bucket
    (tmp_path / "data").mkdir()
    write_shards(tmp_path / "data", [6, 1], unique_labels=True)
    url = upload(client, bucket, tmp_path / "data", "shards")
    monkeypatch.setenv("DALI_RESIZER_CACHE", str(tmp_path / "cache"))
    ranks = torchrun(2, url, 2, False, tmp_path / "out.json", port=29690)
    check(ranks, 7, 2, False, padding_id=PAD_LABEL)
    copies = [p for p in (tmp_path / "cache" / "shards").iterdir() if p.suffix in (".tar", ".idx")]
    assert len(copies) == 2 and sum(rank["downloads"] for rank in ranks) == 2


def test_shards_make_writes_into_a_bucket(image_folder, s3_bucket, tmp_path):
    from dali_resizer.shards import main

    client, bucket = s3_bucket
    url = f"s3://{bucket}/shards/train"
    assert main(["make", str(image_folder), url, "--samples-per-shard", "4", "--prefix", "train"]) == 0
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"shards/train/{name}" for name in ["classes.txt", "manifest.json"] + [
        f"train-00000{i}.{ext}" for i in range(3) for ext in ("idx", "sources.json", "tar")]]
    loader = DALILoader(url, batch_size=4, size=8, shuffle=False, return_index=True, index_dir=tmp_path / "cache")
    assert loader.classes == ["cat", "dog", "emu"] and not (tmp_path / "cache").exists()  # (read in the bucket)
    assert sorted(i for _, _, idx in loader for i in idx.tolist()) == list(range(11))
    assert main(["make", str(image_folder), url, "--prefix", "train"]) == 2  # holds shards: --overwrite
    assert main(["make", str(image_folder), url, "--prefix", "train", "--overwrite"]) == 0
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert "shards/train/train-000001.tar" not in keys  # the smaller new set: the stale shards are gone


def test_a_file_list_of_a_folder_in_a_bucket(image_folder, s3_bucket, tmp_path):
    from dali_resizer.readers import FILE_LIST_HEADER

    client, bucket = s3_bucket
    url = upload(client, bucket, image_folder, "listed")
    names = ["cat/a.jpg", "dog/g.jpg", "emu/k.jpg"]
    (tmp_path / "list.txt").write_text(f"{FILE_LIST_HEADER}\n# root: {url}\n" + "".join(f"{n}\n" for n in names))
    client.upload_file(str(tmp_path / "list.txt"), bucket, "lists/subset.txt")
    for where in (tmp_path / "list.txt", f"s3://{bucket}/lists/subset.txt"):
        loader = DALILoader(where, batch_size=3, size=8, train=False)
        assert loader.dataset.files == [f"{url}/{n}" for n in names] and loader.classes == ["cat", "dog", "emu"]
        assert [y for _, lab in loader for y in lab.tolist()] == [0, 1, 2]


@pytest.mark.parametrize("reason", ["said", "lost"])
def test_an_object_removed_mid_epoch_is_named(tmp_path, s3_bucket, monkeypatch, reason):
    """DALI's error names the missing object, or (a race in DALI's reader thread, seen in CI) says no
    reason: then the pipeline built to find the failing sample meets the missing object, and that is
    what is reported."""
    from dali_resizer import iterator
    from dali_resizer.samples import DaliFailure

    looks = []
    classify = iterator.classify_failure

    def first_look_misses(error):  # the loader's first reading of DALI's error finds no storage failure in it
        looks.append(error)
        return DaliFailure("sample", "no reason given") if len(looks) == 1 else classify(error)

    if reason == "lost":
        monkeypatch.setattr(iterator, "classify_failure", first_look_misses)
    client, bucket = s3_bucket
    paths = write_shards(tmp_path, [4, 4], unique_labels=True)
    for path in paths:
        build_index(path, path.with_suffix(".idx"))
    url = upload(client, bucket, tmp_path, "shards")
    loader = DALILoader(url, batch_size=2, size=8, shuffle=False, prefetch_queue_depth=1, index_dir=tmp_path / "c",
                        cache=False)  # (read in place: through the cache, a tar once downloaded is local)
    batches = iter(loader)
    next(batches)
    client.delete_object(Bucket=bucket, Key="shards/train-000001.tar")
    with pytest.raises(FileNotFoundError, match=f"{url}/train-000001.tar: removed while epoch 0 was read"):
        list(batches)
    if reason == "lost":
        assert len(looks) == 2  # (the second: the replay pipeline's own failure)


@pytest.mark.slow
def test_the_throughput_benchmark_measures_s3_against_a_local_copy(tmp_path, s3_bucket, monkeypatch):
    """``--data s3://...``: the DALI contenders run over the bucket and over a local copy of the same
    objects (made once into the cache), the baseline on the copy only, and the ratio is theirs."""
    from tests.conftest import load_benchmark

    client, bucket = s3_bucket
    (tmp_path / "shards").mkdir()
    paths = write_shards(tmp_path / "shards", [5, 3])
    for path in paths:
        build_index(path, path.with_suffix(".idx"))
    url = upload(client, bucket, tmp_path / "shards", "tp")
    monkeypatch.setenv("DALI_RESIZER_CACHE", str(tmp_path / "cache"))
    report = load_benchmark("throughput").main([
        "--data", url, "--threads", "1", "--repeats", "1", "--batch-size", "4", "--size", "16",
        "--contenders", "webdataset-pil-bilinear", "dali-bilinear"])
    rows = {(r["storage"], r["name"]): r for r in report["results"]}
    assert set(rows) == {("local", "webdataset-pil-bilinear"), ("local", "dali-bilinear"), ("s3", "dali-bilinear")}
    copy = rows[("local", "dali-bilinear")]["data"]
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.tar")) == [p.name for p in paths]
    assert copy.startswith(str(tmp_path / "cache")) and rows[("s3", "dali-bilinear")]["data"] == url
    for row in (rows[("s3", "dali-bilinear")], rows[("local", "dali-bilinear")]):
        assert row["untimed_first_batch"] + row["images"] == 8  # the whole epoch, its first batch untimed
    (pair,) = report["s3_against_local"]
    assert pair["s3_to_local"] == pytest.approx(rows[("s3", "dali-bilinear")]["images_per_s"]
                                                / rows[("local", "dali-bilinear")]["images_per_s"])
