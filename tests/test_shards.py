import io
import tarfile

import numpy as np
import pytest
import torch

from dali_resizer import DALILoader
from dali_resizer.shards import write_shards
from tests.conftest import encode, random_image
from tests.conftest import write_shards as write_test_shards


def test_write_shards_round_trip(image_folder, tmp_path):
    paths = write_shards(image_folder, tmp_path / "out", samples_per_shard=4, prefix="train")
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert all(p.with_suffix(".idx").is_file() for p in paths)
    folder = DALILoader(image_folder, batch_size=4, size=8)
    shards = DALILoader(tmp_path / "out", batch_size=4, size=8, index_dir=tmp_path / "unused")
    assert not (tmp_path / "unused").exists()  # the indexes beside the tars were used
    assert shards.classes == folder.classes
    assert len(shards.dataset) == len(folder.dataset) == 11
    got = sorted(int(y) for _, labels in shards for y in labels)
    assert got == sorted(folder.dataset.targets)


def test_shards_keep_the_original_bytes(image_folder, tmp_path):
    (path,) = write_shards(image_folder, tmp_path, samples_per_shard=100, shuffle=False)
    with tarfile.open(path) as tar:
        names = tar.getnames()
        first = tar.extractfile("000000000.jpg").read()
        label = tar.extractfile("000000000.cls").read()
    assert sorted(names[:2]) == ["000000000.cls", "000000000.jpg"]
    assert label == b"0"
    source = DALILoader(image_folder, batch_size=1).dataset
    with open(source.files[0], "rb") as f:
        assert first == f.read()


def test_unsupported_image_type_is_named(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.bmp")
    with pytest.raises(ValueError, match=r"x\.bmp: shards hold jpg, jpeg, png, webp"):
        write_shards(tmp_path, tmp_path / "out")


def test_cli_make_verify_and_rerun(image_folder, tmp_path, capsys):
    from dali_resizer.shards import main

    out = tmp_path / "out"
    assert main(["make", str(image_folder), str(out), "--samples-per-shard", "4", "--prefix", "train"]) == 0
    assert main(["verify", str(out)]) == 0
    assert main(["make", str(image_folder), str(out), "--samples-per-shard", "4", "--prefix", "train"]) == 2
    assert "already holds" in capsys.readouterr().err
    # Overwrite with fewer, larger shards: the old third shard must not survive to be read again.
    assert main(["make", str(image_folder), str(out), "--samples-per-shard", "6", "--prefix", "train",
                 "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "manifest.json", "train-000000.idx",
                                                     "train-000000.sources.json", "train-000000.tar",
                                                     "train-000001.idx", "train-000001.sources.json",
                                                     "train-000001.tar"]
    assert len(DALILoader(out, batch_size=4, size=8).dataset) == 11


def test_verify_and_loader_catch_a_stale_index(image_folder, tmp_path):
    import os
    import time

    import numpy as np
    import webdataset as wds

    from dali_resizer.shards import verify_shards
    from tests.conftest import encode, random_image

    (tar,) = write_shards(image_folder, tmp_path, samples_per_shard=100)
    with wds.TarWriter(str(tar)) as sink:  # the tar is rewritten with other samples; its index is not
        image = encode(random_image(np.random.default_rng(0), 20, 20))
        for i in range(3):
            sink.write({"__key__": f"new{i}", "jpg": image, "cls": b"x" if i == 2 else b"1"})
    os.utime(tar.with_suffix(".idx"), (time.time() - 100, time.time() - 100))
    with pytest.raises(ValueError, match=f"{tar}: changed since manifest.json was written"):
        list(DALILoader(tmp_path, batch_size=2, size=8, index_dir=tmp_path / "cache"))  # (checked when read)
    (tmp_path / "manifest.json").unlink()  # without it, every index is checked at start-up
    problems = verify_shards(tmp_path)
    assert any(str(tar.with_suffix(".idx")) in p for p in problems["stale index"])
    assert problems["non-integer label"] == [f"{tar}: new2 (b'x')"]
    with pytest.warns(UserWarning, match="older than its tar"):
        loader = DALILoader(tmp_path, batch_size=2, size=8, index_dir=tmp_path / "cache")
    assert len(loader.dataset) == 3  # read through a fresh index, not the stale one


def test_verify_reports_missing_parts(tmp_path):
    import webdataset as wds

    from dali_resizer.readers.wds_index import build_index
    from dali_resizer.shards import verify_shards

    tar = tmp_path / "x-000000.tar"
    with wds.TarWriter(str(tar)) as sink:
        sink.write({"__key__": "a", "jpg": b"\xff\xd8", "cls": b"1"})
        sink.write({"__key__": "b", "cls": b"0"})
        sink.write({"__key__": "c", "png": b"\x89PNG"})
        sink.write({"__key__": "d", "jpg": b"\xff\xd8", "cls": b"7"})
    build_index(tar, tmp_path / "x-000000.idx")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    problems = verify_shards(tmp_path)
    assert problems["sample without image"] == [f"{tar}: b"]
    assert problems["sample without label"] == [f"{tar}: c"]
    assert problems["label out of range"] == [f"{tar}: d (label 7 is out of range for the 2 classes of classes.txt)"]
    assert "stale index" not in problems


@pytest.mark.parametrize("shuffle", [False, True])
def test_return_index_gives_shard_samples_a_stable_index(tmp_path, shuffle):
    """Index = position in the tars in the order given, each in its index's order: with unique labels
    (label i for the i-th sample written) the index is the label, on every rank, every epoch."""
    write_test_shards(tmp_path, [5, 3, 4], unique_labels=True)
    seen = []
    for rank in range(2):
        loader = DALILoader(tmp_path, batch_size=3, size=8, shuffle=shuffle, shard_id=rank, num_shards=2,
                            return_index=True)
        for epoch in range(2):
            loader.set_epoch(epoch)
            for _, labels, indices in loader:
                real = indices >= 0
                assert torch.equal(indices[real], labels[real]) and bool((labels[~real] == -100).all())
                if epoch == 0:
                    seen += indices[real].tolist()
    assert sorted(seen) == list(range(12))  # a coverage check written from README works on shards


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_member_names_with_extra_dots_follow_webdataset_keys(tmp_path):
    """``img.v0.jpg``: key ``img``, extension ``v0.jpg`` (all after the first dot of the file name), as
    webdataset reads it: not the ``jpg`` image. A sample with neither an image nor a label has no name
    in DALI's output; the loader finds it in the index and names it."""
    from dali_resizer.samples import BadSampleError

    jpeg = encode(random_image(np.random.default_rng(0), 20, 30))
    write_tar(tmp_path / "s-000000.tar", [("img.v0.jpg", jpeg), ("img.v0.cls", b"0"), ("a.b.jpg", jpeg),
                                          ("a.cls", b"1"), ("dir.x/c.jpg", jpeg), ("dir.x/c.cls", b"2")])
    loader = DALILoader(tmp_path, batch_size=3, size=8, shuffle=False, on_error="skip", return_index=True)
    with pytest.warns(UserWarning, match="sample img"):
        batches = list(loader)
    labels = [y for _, lab, _ in batches for y in lab.tolist()]
    assert sorted(labels) == [-100, -100, 2]  # only dir.x/c is a whole sample
    assert "its members are img.v0.jpg, img.v0.cls" in loader.skipped[f"{tmp_path}/s-000000.tar (sample img)"]
    assert "no image" in loader.skipped[f"{tmp_path}/s-000000.tar (sample a)"]
    with pytest.raises(BadSampleError, match="sample img.*neither an image"):
        list(DALILoader(tmp_path, batch_size=3, size=8, shuffle=False))


def test_a_tar_listed_twice_is_refused(tmp_path):
    tar = write_test_shards(tmp_path, [2])[0]
    with pytest.raises(ValueError, match="listed twice in the source"):
        DALILoader([tar, tar], batch_size=2)
    (tmp_path / "link.tar").symlink_to(tar)
    with pytest.raises(ValueError, match=f"link.tar: listed twice in the source \\(also as {tar}\\)"):
        DALILoader([tar, tmp_path / "link.tar"], batch_size=2)


def test_verify_notes_a_missing_index_and_prints_on_stdout(tmp_path, capsys):
    from dali_resizer.shards import main

    write_test_shards(tmp_path, [2])  # webdataset's writer: no .idx
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    assert main(["verify", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "no .idx beside the tar (note:" in captured.out and captured.out.rstrip().endswith("ok, 1 note(s)")
    assert captured.err == ""


@pytest.mark.parametrize("cut", ["inside a member", "inside a header"])
@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_a_tar_cut_short_is_read_up_to_the_cut(tmp_path, cut, on_error):
    from dali_resizer.samples import BadSampleError
    from dali_resizer.shards import verify_shards

    tar = write_test_shards(tmp_path, [4], unique_labels=True)[0]
    with tarfile.open(tar) as t:
        last = t.getmembers()[-2:]  # sample-00003's .cls and .jpg (webdataset writes them in key order)
    data = tar.read_bytes()
    jpg = next(m for m in last if m.name.endswith(".jpg"))
    end = jpg.offset_data + jpg.size // 2 if cut == "inside a member" else jpg.offset + 100
    tar.write_bytes(data[:end])
    if on_error == "raise" and cut == "inside a member":
        with pytest.raises(BadSampleError, match="sample sample-00003.*cut short"):
            DALILoader(tmp_path, batch_size=2, size=8)
        return
    if on_error == "raise":  # the cut is said at construction; the sample it leaves without an image stops
        with pytest.warns(UserWarning, match="cut short or damaged at byte"):
            loader = DALILoader(tmp_path, batch_size=2, size=8, shuffle=False)
        with pytest.raises(BadSampleError, match=r"sample sample-00003\): no image"):
            list(loader)
        return
    with pytest.warns(UserWarning) as record:
        loader = DALILoader(tmp_path, batch_size=2, size=8, shuffle=False, on_error=on_error, return_index=True)
        labels = [y for _, lab, _ in loader for y in lab.tolist()]
    said = " ".join(str(w.message) for w in record)
    if cut == "inside a member":  # the cut sample is counted and padded; the others are read
        assert sorted(labels) == [-100, 0, 1, 2] and "sample-00003" in next(iter(loader.skipped))
    else:  # the header of the last image is cut: the tar is read to there, and the cut is said
        assert "cut short or damaged at byte" in said
        assert sorted(y for y in labels if y >= 0) == [0, 1, 2]
    assert verify_shards(tmp_path)["tar cut short"]


def test_make_writes_a_manifest_that_the_loader_reads_instead_of_every_index(image_folder, tmp_path, monkeypatch):
    import json

    from dali_resizer import storage
    from dali_resizer.shards import verify_shards

    paths = write_shards(image_folder, tmp_path / "out", samples_per_shard=4, prefix="train")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["classes"] == ["cat", "dog", "emu"]
    assert [(e["tar"], e["samples"], e["bytes"]) for e in manifest["shards"]] == [
        (p.name, n, p.stat().st_size) for p, n in zip(paths, [4, 4, 3])]
    assert verify_shards(tmp_path / "out") == {}
    read = []
    original = storage.LocalStorage.read
    monkeypatch.setattr(storage.LocalStorage, "read", lambda self, path, *a: read.append(path) or original(
        self, path, *a))
    loader = DALILoader(tmp_path / "out", batch_size=4, size=8, shuffle=False, return_index=True)
    assert read == [str(tmp_path / "out" / "manifest.json")]  # one object at start-up, no index header
    assert len(loader) == 3 and loader.classes == ["cat", "dog", "emu"]
    assert sorted(i for _, _, idx in loader for i in idx.tolist()) == list(range(11))
    monkeypatch.undo()
    paths[1].write_bytes(paths[1].read_bytes() + bytes(10240))  # a tar rewritten behind the manifest's back
    assert verify_shards(tmp_path / "out")["manifest does not match the shards"] == [
        f"{paths[1]}: {manifest['shards'][1]['bytes']} bytes listed, {paths[1].stat().st_size} in the tar"]


LABELS = [b"0", b"7", b" 12\n", b"0" * 19 + b"3", b"9" * 18, b"9" * 19, b"1 2", b"cat", b"", b"  ", b"-1", b"+1",
          b"1.0", b"1\x002", "\u00b2".encode(), "\u0661".encode(), b"\t5\r\n", b"1e3", b"0x10"]


def test_the_batch_parse_of_labels_is_the_sample_rule():
    """The reader parses a batch's ``.cls`` rows at once (zero-padded to the longest); which rows it
    refuses is exactly what the one sample rule refuses, and the values it reads are ``int``'s."""
    import torch

    from dali_resizer.readers.wds_index import sample_problem
    from dali_resizer.readers.webdataset import _ascii_labels

    width = max(len(label) for label in LABELS)
    rows = torch.tensor([list(label.ljust(width, b"\0")) for label in LABELS], dtype=torch.uint8)
    values, valid = _ascii_labels(rows)
    for label, value, ok in zip(LABELS, values.tolist(), valid.tolist()):
        assert ok == (sample_problem(True, label, None) is None), label
        if ok:
            assert value == int(label.decode().strip()), label


def test_verify_and_the_loader_name_a_bad_label_alike(tmp_path):
    import webdataset as wds

    from dali_resizer import DALILoader
    from dali_resizer.readers.wds_index import build_index
    from dali_resizer.shards import verify_shards
    from tests.conftest import encode, random_image

    tar = tmp_path / "x-000000.tar"
    image = encode(random_image(np.random.default_rng(0), 16, 16))
    with wds.TarWriter(str(tar)) as sink:
        sink.write({"__key__": "a", "jpg": image, "cls": b"1"})
        sink.write({"__key__": "b", "jpg": image, "cls": b"9" * 20})
    build_index(tar, tmp_path / "x-000000.idx")
    loader = DALILoader(tmp_path, batch_size=2, size=8, on_error="skip")
    with pytest.warns(UserWarning, match="sample b"):
        list(loader)
    reason = loader.skipped[f"{tar} (sample b)"]
    assert verify_shards(tmp_path)["label out of range"] == [f"{tar}: b ({reason})"]
