"""Sets that are wrong as a whole (their listing, manifest, classes, indexes), each written by its test:
every good sample read once with its label, or an error naming the file and the problem; never a
silent loss, and ``shards verify`` says what the loader would meet."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from dali_resizer import PAD_LABEL, BadSampleError, DALILoader
from dali_resizer.shards import verify_shards, write_shards
from tests.conftest import encode, random_image
from tests.conftest import write_shards as write_test_shards


@pytest.fixture
def made(image_folder, tmp_path):
    """``shards make`` of the 11-image folder: 3 tars (4, 4, 3), indexes, classes.txt, manifest.json."""
    out = tmp_path / "out"
    write_shards(image_folder, out, samples_per_shard=4, prefix="train")
    return out


def labels_of(loader) -> list[int]:
    return sorted(int(y) for _, labels in loader for y in labels if int(y) != PAD_LABEL)


# -- classes -----------------------------------------------------------------------------------------


def test_a_class_name_is_a_line_whatever_it_holds(tmp_path):
    write_test_shards(tmp_path, [3])
    (tmp_path / "classes.txt").write_text("ant\u2028bee\ncow\nemu\n")  # U+2028: a character, not a line break
    loader = DALILoader(tmp_path, batch_size=2, size=8, index_dir=tmp_path / "idx")
    assert loader.classes == ["ant\u2028bee", "cow", "emu"]
    (tmp_path / "classes.txt").write_text("ant\n\ncow\n")
    with pytest.raises(ValueError, match=r"classes\.txt:2: a blank class name"):
        DALILoader(tmp_path, batch_size=2, size=8, index_dir=tmp_path / "idx")
    assert "bad classes.txt" in verify_shards(tmp_path)


def test_manifest_classes_that_disagree_with_classes_txt_are_named(made):
    """The loader reads the manifest alone at start-up (one object), so its classes are the manifest's,
    and an out-of-range label says so; ``verify`` reports the disagreement."""
    manifest = json.loads((made / "manifest.json").read_text())
    manifest["classes"] = ["cat", "dog"]
    (made / "manifest.json").write_text(json.dumps(manifest))
    loader = DALILoader(made, batch_size=4, size=8)
    assert loader.classes == ["cat", "dog"]
    with pytest.raises(ValueError, match=r"label 2 is out of range for the 2 classes of manifest\.json"):
        list(loader)
    assert any("other classes" in item for item in verify_shards(made)["manifest does not match the shards"])


# -- the manifest --------------------------------------------------------------------------------------


def test_a_tar_the_manifest_lists_and_the_folder_lacks_is_named(made):
    (made / "train-000001.tar").unlink()
    (made / "train-000001.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"train-000001\.tar: listed in .*manifest\.json but not in the folder"):
        DALILoader(made, batch_size=4, size=8)
    assert verify_shards(made)["manifest does not match the shards"] == [
        f"{made / 'train-000001.tar'}: listed, but not in the folder"]


@pytest.mark.parametrize("change", [-1, 1])
def test_a_manifest_count_off_by_one_is_an_error_naming_the_tar(made, change):
    manifest = json.loads((made / "manifest.json").read_text())
    manifest["shards"][1]["samples"] += change
    (made / "manifest.json").write_text(json.dumps(manifest))
    loader = DALILoader(made, batch_size=4, size=8)
    with pytest.raises(ValueError, match=rf"train-000001\.tar: changed since manifest\.json was written "
                                         rf"\({4 + change} samples in the manifest, 4 in its index\)"):
        list(loader)
    assert any("samples listed" in item for item in verify_shards(made)["manifest does not match the shards"])


# -- how `shards make` writes a set --------------------------------------------------------------------


def test_a_second_set_is_refused_in_a_folder_that_holds_one(made, image_folder, tmp_path, capsys):
    """One set a folder: its manifest and classes.txt describe every tar in it."""
    from dali_resizer.shards import main

    with pytest.raises(FileExistsError, match=r"train-000000\.idx: .* holds another set's shards"):
        write_shards(image_folder, made, samples_per_shard=4, prefix="val")
    with pytest.raises(FileExistsError, match="holds another set's shards"):  # --overwrite replaces its own set only
        write_shards(image_folder, made, samples_per_shard=4, prefix="val", overwrite=True)
    assert main(["make", str(image_folder), str(made), "--prefix", "val"]) == 2
    assert "holds another set's shards" in capsys.readouterr().err
    assert labels_of(DALILoader(made, batch_size=4, size=8)) == sorted([0] * 4 + [1] * 3 + [2] * 4)


def test_a_folder_holding_tars_its_manifest_does_not_list_is_refused(made, tmp_path):
    """A folder holding two sets (or a tar added by hand) is not read as the set its manifest describes."""
    other = tmp_path / "other"
    other.mkdir()
    write_test_shards(other, [3], prefix="val")
    shutil.copy(other / "val-000000.tar", made)
    with pytest.raises(ValueError, match=r"val-000000\.tar: in the folder but not in .*manifest\.json"):
        DALILoader(made, batch_size=4, size=8)
    loader = DALILoader(sorted(str(p) for p in made.glob("train-*.tar")), batch_size=4, size=8)  # the set itself
    assert len(loader.dataset) == 11
    assert verify_shards(made)["manifest does not match the shards"] == [f"{made / 'val-000000.tar'}: not listed"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_make_leaves_a_set_that_nothing_reads_as_whole(image_folder, tmp_path, signum):
    """``shards make`` stopped half-way (here: blocked reading a FIFO, the 12th image, while 11 shards are
    published) leaves a manifest that says so: the loader and ``verify`` refuse the folder, a rerun asks
    for --overwrite, and one with it writes the whole set. Ctrl-C and SIGTERM remove the run's temporary
    folder; what SIGKILL leaves is removed by the next run."""
    source = tmp_path / "src"
    shutil.copytree(image_folder, source)
    fifo = source / "zoo" / "last.jpg"  # (the last class: read after every other image)
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    out = tmp_path / "out"
    make = [sys.executable, "-m", "dali_resizer.shards", "make", str(source), str(out), "--samples-per-shard", "1",
            "--no-shuffle", "--prefix", "train"]
    process = subprocess.Popen(make, stderr=subprocess.PIPE, text=True)
    writer, deadline = None, time.monotonic() + 120
    while writer is None:  # (opens once the run reads the FIFO: every earlier shard is published by then)
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # (ENXIO: no reader yet)
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
            time.sleep(0.01)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    os.close(writer)
    assert len(list(out.glob("train-*.tar"))) == 11
    if signum == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL and len(list(out.glob(".shards-make-*"))) == 1
    else:
        assert process.returncode == 130 and "holds a partial set" in err
        assert list(out.glob(".shards-make-*")) == []
    with pytest.raises(ValueError, match=r"manifest\.json: `shards make .*` started at .* and did not finish"):
        DALILoader(out, batch_size=4, size=8)
    assert "unfinished set" in verify_shards(out)
    fifo.unlink()
    fifo.write_bytes(encode(random_image(np.random.default_rng(0), 20, 30)))
    with pytest.raises(FileExistsError, match="an earlier `shards make` into it did not finish"):
        write_shards(source, out, samples_per_shard=4, prefix="train")
    write_shards(source, out, samples_per_shard=4, prefix="train", overwrite=True)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tar") == [f"train-00000{i}.tar" for i in range(3)]
    assert list(out.glob(".shards-make-*")) == [] and verify_shards(out) == {}
    assert labels_of(DALILoader(out, batch_size=4, size=8)) == sorted([0] * 4 + [1] * 3 + [2] * 4 + [3])


# -- tars and indexes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_an_index_offset_off_by_a_block_is_an_error_naming_the_tar(tmp_path, on_error):
    from dali_resizer.readers.wds_index import build_index

    (tar,) = write_test_shards(tmp_path, [4], unique_labels=True)
    index = tar.with_suffix(".idx")
    build_index(tar, index)
    lines = index.read_text().splitlines()
    row = lines[2].split()  # (cls OFFSET SIZE NAME jpg OFFSET SIZE NAME)
    jpg = row.index("jpg")
    row[jpg + 1] = str(int(row[jpg + 1]) + 512)  # the image of the second sample, one tar block late
    lines[2] = " ".join(row)
    index.write_text("\n".join(lines) + "\n")
    loader = DALILoader(tmp_path, batch_size=4, size=8, on_error=on_error)
    with pytest.raises(ValueError, match=rf"{index}: does not match its tar {tar} \(line 3: sample-00001\.jpg "
                                         rf"\(\d+ bytes\) at byte \d+, where the tar holds no member\)"):
        list(loader)
    assert "stale index" in verify_shards(tmp_path)


def _index_lines(tmp_path):
    from dali_resizer.readers.wds_index import build_index

    (tar,) = write_test_shards(tmp_path, [4], unique_labels=True)
    index = tar.with_suffix(".idx")
    build_index(tar, index)
    return tar, index, index.read_text().splitlines()


@pytest.mark.parametrize("fields", ["offsets", "members"])
def test_an_index_whose_rows_swap_members_is_refused_before_a_label_is_read(tmp_path, fields):
    """Rows that swapped their labels' offsets (names kept), or their label members whole, would read
    each sample with the other's label: every row is checked against the tar's headers at its first read."""
    tar, index, lines = _index_lines(tmp_path)
    first, second = lines[1].split(), lines[2].split()
    i, j = first.index("cls"), second.index("cls")
    for k in (1, 2) if fields == "offsets" else (0, 1, 2, 3):  # (ext, offset, size, name)
        first[i + k], second[j + k] = second[j + k], first[i + k]
    index.write_text("\n".join([lines[0], " ".join(first), " ".join(second), *lines[3:]]) + "\n")
    reason = (r"line \d: sample-0000\d\.cls \(1 bytes\) at byte \d+, where the tar holds sample-0000\d\.cls"
              if fields == "offsets" else r"line 2 holds members of 2 samples \(sample-00000, sample-00001\)")
    with pytest.raises(ValueError, match=rf"{index}: does not match its tar .*\({reason}"):
        list(DALILoader(tmp_path, batch_size=4, size=8, on_error="skip"))
    assert "stale index" in verify_shards(tmp_path)


def test_an_index_with_a_row_dropped_is_refused_instead_of_losing_the_sample(tmp_path):
    tar, index, lines = _index_lines(tmp_path)
    index.write_text("\n".join(["v1.2 3", *lines[1:3], *lines[4:]]) + "\n")  # (sample 2 gone, count lowered)
    with pytest.raises(ValueError, match=rf"{index}: does not match its tar .*\(the tar's member sample-00002\.\w+ "
                                         rf"is not in the index\)"):
        list(DALILoader(tmp_path, batch_size=4, size=8))
    assert "stale index" in verify_shards(tmp_path)


@pytest.mark.parametrize("where", ["local", "s3", "s3 in place"])
def test_an_index_cut_short_is_an_error_naming_it_and_its_line(tmp_path, where, request):
    """A local tar's index, or the local copy of one in object storage, is checked row by row at the tar's
    first read; read in place in object storage (``cache=False``, where that check would cost a request a
    member), DALI's own words name the index and its line."""
    from dali_resizer.readers.wds_index import build_index
    from tests.conftest import upload

    (tar,) = write_test_shards(tmp_path, [4], unique_labels=True)
    index = tar.with_suffix(".idx")
    build_index(tar, index)
    index.write_text(index.read_text()[:-20])
    data, named, kw = tmp_path, index, {}
    if where != "local":
        client, bucket = request.getfixturevalue("s3_bucket")
        data = upload(client, bucket, tmp_path, "shards")
        named = f"{data}/{index.name}"
        kw = {"cache": tmp_path / "cache"} if where == "s3" else {"cache": False}
    loader = DALILoader(data, batch_size=4, size=8, on_error="skip", **kw)
    said = rf"{named}: .*line 5 is not a sample" if where != "s3 in place" else (
        rf'Malformed index file at "{named}" line 4')
    with pytest.raises(ValueError, match=rf"{said}.*shards index"):
        list(loader)
    assert loader.skipped == {}


def test_an_empty_tar_among_good_ones_holds_nothing_to_lose(tmp_path):
    write_test_shards(tmp_path, [3, 4], unique_labels=True)
    (tmp_path / "train-000009.tar").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"train-000009\.tar: no samples"):
        loader = DALILoader(tmp_path, batch_size=2, size=8, index_dir=tmp_path / "idx")
    assert labels_of(loader) == list(range(7))


def test_a_source_of_empty_tars_is_an_error(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"")
    with pytest.raises(ValueError, match=r"a\.tar: no samples in any tar of the source"):
        DALILoader(tmp_path, batch_size=2, size=8, index_dir=tmp_path / "idx")
    empty = tmp_path / "e"
    empty.mkdir()
    import tarfile

    with tarfile.open(empty / "only.tar", "w"):
        pass  # a valid tar with no member
    with pytest.raises(ValueError, match=r"only\.tar: no samples in any tar of the source"):
        DALILoader(empty, batch_size=2, size=8, index_dir=tmp_path / "idx")


def test_a_folder_of_compressed_tars_says_so(tmp_path):
    (tmp_path / "train-000000.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match=r"compressed tars \(train-000000\.tar\.gz\), which DALI does not read"):
        DALILoader(tmp_path, batch_size=2)


# -- bytes the loader names --------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "named"), [
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00mif1", "AVIF image (DALI does not decode AVIF)"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIC/HEIF image"),
    (b"\xff\x0a\xfa\x7f", "JPEG XL image"),
])
def test_formats_dali_does_not_decode_are_named(tmp_path, head, named):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        random_image(np.random.default_rng(0), 16, 16).save(tmp_path / c / "good.jpg")
    (tmp_path / "b" / "photo.jpg").write_bytes(head + bytes(200))
    loader = DALILoader(tmp_path, batch_size=3, size=8, on_error="skip")
    with pytest.warns(UserWarning, match="photo.jpg"):
        list(loader)
    assert named in loader.skipped[str(tmp_path / "b" / "photo.jpg")]


def test_training_on_one_class_is_warned_about(tmp_path):
    from dali_resizer.train import main

    (tmp_path / "data" / "only").mkdir(parents=True)
    for i in range(4):
        (tmp_path / "data" / "only" / f"{i}.jpg").write_bytes(encode(random_image(np.random.default_rng(i), 24, 24)))
    with pytest.warns(UserWarning, match=r"one class \(only\): every prediction is right"):
        main(["--data", str(tmp_path / "data"), "--epochs", "1", "--output", str(tmp_path / "run"), "--backbone",
              "resnet18", "--size", "8", "--input-size", "16", "--batch-size", "2", "--num-threads", "1", "--quiet",
              "--device", "cpu"])
    shutil.rmtree(tmp_path / "run")


def test_a_folder_whose_images_are_all_bad_is_an_error_naming_it(tmp_path):
    from dali_resizer import BadSampleError

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            (tmp_path / c / f"{i}.jpg").write_bytes(b"<html>not found</html>")
    loader = DALILoader(tmp_path, batch_size=2, size=8, shuffle=True, on_error="skip")
    with pytest.warns(UserWarning, match="skipped 2 bad sample"):
        labels = [y for _, lab in loader for y in lab.tolist()]
    assert labels == [PAD_LABEL] * 6 and len(loader.skipped) == 6  # each named as it was met
    with pytest.raises(BadSampleError, match=rf"{tmp_path}: every image of the source is bad \(6 skipped"):
        list(loader)  # (the next epoch: nothing to stand in for them)


def test_a_shard_whose_samples_are_all_bad_is_read_as_padding_in_later_epochs(tmp_path):
    """No image of the tar can stand in for its bad samples: they read a stand-in tar's image, as
    padding, so every later epoch reads the good tars whole with the same batch count."""
    import webdataset as wds

    write_test_shards(tmp_path, [5], unique_labels=True)
    with wds.TarWriter(str(tmp_path / "train-000001.tar")) as sink:
        for i in range(3):
            sink.write({"__key__": f"bad-{i}", "jpg": b"<html>not found</html>", "cls": b"1"})
    loader = DALILoader(tmp_path, batch_size=2, size=8, shuffle=True, on_error="skip", return_index=True)
    for epoch in range(3):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            seen = [(int(y), int(i)) for _, labels, indices in loader for y, i in zip(labels, indices)]
        assert sorted(y for y, _ in seen if y != PAD_LABEL) == [0, 1, 2, 3, 4], epoch
        assert len(seen) == 8 and sorted(i for _, i in seen if i >= 0) == [0, 1, 2, 3, 4]
        assert bool(said) == (epoch == 0)  # (named once, as they were met)
    assert sorted(loader.skipped) == [f"{tmp_path / 'train-000001.tar'} (sample bad-{i})" for i in range(3)]


def test_shards_whose_samples_are_all_bad_are_an_error_naming_them(tmp_path):
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "train-000000.tar")) as sink:
        for i in range(3):
            sink.write({"__key__": f"bad-{i}", "jpg": b"<html>not found</html>", "cls": b"1"})
    loader = DALILoader(tmp_path, batch_size=2, size=8, on_error="skip")
    with pytest.warns(UserWarning, match="bad sample"):
        assert [y for _, labels in loader for y in labels.tolist()] == [PAD_LABEL] * 3
    with pytest.raises(BadSampleError, match=r"train-000000\.tar \.\.\.: every sample of the source is bad \(3"):
        list(loader)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_member_name_with_whitespace_is_a_named_bad_sample(tmp_path, on_error, capsys):
    """DALI's index holds a name without whitespace: such a member is left out of the index built for
    the tar, and named (raised, or skipped with the rest of the tar read); verify and ``shards index``
    say so too."""
    import io
    import tarfile

    from dali_resizer import BadSampleError
    from dali_resizer.shards import main as shards

    tar = tmp_path / "s" / "train-000000.tar"
    tar.parent.mkdir()
    image = encode(random_image(np.random.default_rng(0), 16, 16))
    with tarfile.open(tar, "w") as archive:
        for key, label in (("a", b"0"), ("my photo", b"1"), ("c", b"2")):
            for ext, data in (("jpg", image), ("cls", label)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    if on_error == "raise":
        with pytest.raises(BadSampleError, match=r"train-000000\.tar \(member 'my photo\.jpg'\): its name holds "
                                                 r"whitespace"):
            DALILoader(tar.parent, batch_size=2, size=8, index_dir=tmp_path / "idx")
    else:
        with pytest.warns(UserWarning, match="whitespace"):
            loader = DALILoader(tar.parent, batch_size=2, size=8, index_dir=tmp_path / "idx", on_error=on_error)
        assert labels_of(loader) == [0, 2] and len(loader.skipped) == 2  # (its image and its label)
    assert sorted(verify_shards(tar.parent)["member name with whitespace (left out of the index)"]) == [
        f"{tar}: 'my photo.cls'", f"{tar}: 'my photo.jpg'"]
    assert shards(["index", str(tar)]) == 1  # (no traceback: the index without them, and what was left out)
    assert "2 member(s) whose names hold whitespace left out" in capsys.readouterr().out
    assert "my photo" not in tar.with_suffix(".idx").read_text()


@pytest.mark.parametrize("content", [b"\x00\xff\xfe\x81" * 16, b"", b"v1.2 3\n", b"v1.2 four\n"])
def test_verify_and_check_name_an_index_that_is_not_one(made, content, capsys):
    """A binary, empty, header-only or unreadable index beside a tar: ``verify`` and ``check`` report it
    as a stale index (no traceback); the loader builds its own and reads every sample."""
    from dali_resizer.check import main as check

    (made / "train-000001.idx").write_bytes(content)
    problems = verify_shards(made)
    assert [item.split(":")[0] for item in problems["stale index"]] == [str(made / "train-000001.idx")]
    assert check([str(made)]) == 1 and "stale index: 1" in capsys.readouterr().out
    (made / "manifest.json").unlink()  # (with it, the loader would refuse the changed tar's index outright)
    with pytest.warns(UserWarning, match="train-000001.idx"):
        loader = DALILoader(made, batch_size=4, size=8, index_dir=made / "cache")
    assert len(labels_of(loader)) == 11


# -- what `shards make` checks, and records ------------------------------------------------------------


def _folder_with(tmp_path, image_folder, name: str, data: bytes):
    source = tmp_path / "src"
    shutil.copytree(image_folder, source)
    (source / "dog" / name).write_bytes(data)
    return source


def test_make_names_a_bad_image_or_leaves_it_out_listed(image_folder, tmp_path, capsys):
    from dali_resizer.shards import main

    source = _folder_with(tmp_path, image_folder, "x.jpg", b"<html>404 Not Found</html>")
    with pytest.raises(ValueError, match=rf"{source / 'dog' / 'x.jpg'}: HTML/XML text, not an image .*--skip-bad"):
        write_shards(source, tmp_path / "out", samples_per_shard=4)
    assert main(["make", str(source), str(tmp_path / "kept"), "--samples-per-shard", "4", "--skip-bad"]) == 0
    said = capsys.readouterr()
    assert f"left out: {source / 'dog' / 'x.jpg'}: HTML/XML text" in said.err and "1 bad image(s) left out" in said.out
    manifest = json.loads((tmp_path / "kept" / "manifest.json").read_text())
    assert list(manifest["left_out"]) == [str(source / "dog" / "x.jpg")] and verify_shards(tmp_path / "kept") == {}
    assert labels_of(DALILoader(tmp_path / "kept", batch_size=4, size=8)) == sorted([0] * 4 + [1] * 3 + [2] * 4)


def test_a_bad_sample_of_made_shards_is_named_with_the_file_it_came_from(image_folder, tmp_path):
    """An image whose bytes look right but do not decode: ``--decode`` finds it at make time; without
    it, the loader's error names the shard's sample and the file it was made from."""
    from tests.test_robustness import _jpeg_with_a_bogus_huffman_table

    source = _folder_with(tmp_path, image_folder, "x.jpg", _jpeg_with_a_bogus_huffman_table())
    with pytest.raises(ValueError, match=rf"{source / 'dog' / 'x.jpg'}: JPEG image; DALI: .*Bogus Huffman"):
        write_shards(source, tmp_path / "checked", samples_per_shard=4, decode=True)
    write_shards(source, tmp_path / "out", samples_per_shard=4)
    with pytest.raises(BadSampleError, match=rf"shard-\d+\.tar \(sample \d+\): JPEG image; .*Bogus Huffman table "
                                             rf"definition\) \(made from {source / 'dog' / 'x.jpg'}\)"):
        list(DALILoader(tmp_path / "out", batch_size=4, size=8))
