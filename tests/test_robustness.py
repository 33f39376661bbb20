"""Bad images: a clear error naming the file, or (on_error="skip") skipped, counted, nothing shifted."""

import os
import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dali_resizer import DALILoader
from dali_resizer.loader import PAD_LABEL, BadSampleError
from tests.conftest import encode, random_image


def good_jpeg(seed=0, h=30, w=40) -> bytes:
    return encode(random_image(np.random.default_rng(seed), h, w))


BAD = {
    "truncated": lambda: good_jpeg()[:200],
    "random bytes": lambda: np.random.default_rng(1).integers(0, 256, 700, dtype=np.uint8).tobytes(),
    "zero bytes": lambda: b"",
    "html": lambda: b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
    "gif named jpg": lambda: encode(random_image(np.random.default_rng(2), 20, 20), "GIF"),
    "declares 12000x12000": lambda: jpeg_with_frame(height=12000, width=12000),  # ~1 KB of data
    "12-bit jpeg": lambda: jpeg_with_frame(precision=12),
    "1-bit tiff": lambda: encode(Image.new("1", (16, 16)), "TIFF"),  # PIL decodes it
}
EXPECT = {
    "truncated": "truncated JPEG",
    "random bytes": "unrecognised bytes",
    "zero bytes": "empty file",
    "html": "HTML/XML text",
    "gif named jpg": "GIF image",
    "declares 12000x12000": "JPEG whose header declares 12000x12000 but whose file holds only",
    "12-bit jpeg": "12-bit JPEG (DALI decodes 8-bit JPEG only)",
    "1-bit tiff": "TIFF without a BitsPerSample field",
}


def jpeg_with_frame(precision: int = 8, height: int | None = None, width: int | None = None) -> bytes:
    """A small good JPEG whose frame header (SOF0) says another sample precision or size: what a
    12-bit JPEG, or a file whose header promises a huge image its data does not hold, looks like."""
    data = bytearray(good_jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 4] = precision
    if height is not None:
        data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def make_folder(root, bad_name=None, bad_bytes=None, per_class=5):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / c / f"{i}.jpg").write_bytes(good_jpeg(seed=10 * ord(c) + i))
    if bad_name:
        (root / "b" / bad_name).write_bytes(bad_bytes)
    return root


@pytest.mark.parametrize("kind", list(BAD))
def test_raise_names_the_file_and_the_problem(tmp_path, kind):
    root = make_folder(tmp_path, "2_bad.jpg", BAD[kind]())
    loader = DALILoader(root, batch_size=4, size=16, shuffle=False)
    with pytest.raises(BadSampleError) as info:
        list(loader)
    message = str(info.value)
    assert message.startswith(str(root / "b" / "2_bad.jpg") + ": ")
    assert EXPECT[kind] in message


@pytest.mark.parametrize("kind", ["truncated", "zero bytes", "html"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_skip_delivers_every_good_sample_once_and_counts_the_bad(tmp_path, kind, shuffle):
    root = make_folder(tmp_path, "2_bad.jpg", BAD[kind]())
    loader = DALILoader(root, batch_size=4, size=16, shuffle=shuffle, on_error="skip", return_index=True)
    bad_index = loader.dataset.files.index(str(root / "b" / "2_bad.jpg"))
    for epoch in range(2):
        loader.set_epoch(epoch)
        with pytest.warns(UserWarning, match="2_bad.jpg") if epoch == 0 else _no_warning():
            batches = list(loader)
        assert len(batches) == len(loader)  # same batch count as without the bad file: DDP-safe
        indices = [i for _, _, idx in batches for i in idx.tolist()]
        labels = [y for _, lab, _ in batches for y in lab.tolist()]
        good = [i for i in indices if i >= 0]
        assert sorted(good) == sorted(set(range(11)) - {bad_index})  # every good sample, once
        for i, y in zip(indices, labels):  # labels never shift; the bad file's place is padding
            assert y == (PAD_LABEL if i < 0 else int(loader.dataset.targets[i]))
        assert indices.count(-1) == 1
    assert list(loader.skipped) == [str(root / "b" / "2_bad.jpg")]
    assert EXPECT[kind] in loader.skipped[str(root / "b" / "2_bad.jpg")]


class _no_warning:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


def test_skip_state_survives_resume(tmp_path):
    root = make_folder(tmp_path, "2_bad.jpg", BAD["html"]())
    loader = DALILoader(root, batch_size=3, size=16, shuffle=False, on_error="skip", return_index=True)
    with pytest.warns(UserWarning):
        it = iter(loader)
        [next(it) for _ in range(3)]  # the bad file is the 8th sample: found while preparing batch 3
    state = loader.state_dict()
    assert state["skipped"] and state["batches_done"] == 3
    resumed = DALILoader(root, batch_size=3, size=16, shuffle=False, on_error="skip", return_index=True)
    resumed.load_state_dict(state)
    rest = [i for _, _, idx in resumed for i in idx.tolist()]
    assert rest == [9, 10]  # (samples 0-8 came in the first three batches, 8 as padding)


def drop_file_permission_override() -> None:
    """Root reads any file whatever its mode (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): drops both from
    this process (Linux capget/capset), so a mode-0 file is unreadable to it while everything its
    owner may read (the checkout, the environment, DALI's plugins) stays readable."""
    import ctypes
    import platform

    capget, capset = {"x86_64": (125, 126), "aarch64": (90, 91)}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # 2 x (effective, permitted, inheritable)
    if libc.syscall(capget, header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    dac = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    data[0] &= ~dac & 0xFFFFFFFF
    data[1] &= ~dac & 0xFFFFFFFF
    if libc.syscall(capset, header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def test_unreadable_file_is_named(tmp_path):
    """The loader runs in a fresh interpreter (not a fork of this one, whose DALI threads a fork would
    copy mid-flight) that, when the tests run as root, first gives up root's right to read files
    whatever their mode; it prints the error it met."""
    import subprocess
    import sys
    from pathlib import Path

    root = make_folder(tmp_path / "data")
    os.chmod(root / "a" / "1.jpg", 0)
    script = ("import os, sys\nfrom tests.test_robustness import drop_file_permission_override\n"
              "from dali_resizer import DALILoader\n"
              "if os.geteuid() == 0:\n    drop_file_permission_override()\n"
              "try:\n    list(DALILoader(sys.argv[1], batch_size=4, size=16, num_threads=1))\n"
              "    print('no error')\nexcept Exception as e:\n    print(f'{type(e).__name__}: {e}')\n")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=300,
                          cwd=repo, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"BadSampleError: {root / 'a' / '1.jpg'}: unreadable: Permission denied"), done.stdout


# -- shards ----------------------------------------------------------------------------------------

# Bad samples of a shard, each with the words its error must hold. "truncated" cuts the JPEG inside its
# header (DALI fails without naming the sample: found by replaying the batches), "cut late" keeps the
# header (DALI names the sample itself).
SHARD_BAD = {
    **{kind: ({"jpg": make()}, EXPECT[kind]) for kind, make in BAD.items()},
    "cut late": ({"jpg": good_jpeg(seed=3, h=64, w=64)[:-300]}, "truncated JPEG"),
    "no image": ({}, "no image (.jpg/.jpeg/.png/.webp)"),
    "no label": ({"jpg": good_jpeg(), "cls": None}, "no label (.cls)"),
    "non-integer label": ({"jpg": good_jpeg(), "cls": b"cat"}, "label 'cat' is not a non-negative integer"),
    "label out of range": ({"jpg": good_jpeg(), "cls": b"99"}, "label 99 is out of range for the 50 classes"),
}


def write_dirty_shards(root, bad: dict[int, dict], counts=(7, 6, 7)) -> list[int]:
    """Shards whose sample i has key k<i> and label i (classes.txt: 50 classes), except that the parts
    given in ``bad[i]`` replace (or, as None, remove) its own; returns the good samples' labels."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    i, good = 0, []
    for shard, count in enumerate(counts):
        with wds.TarWriter(str(root / f"s-{shard:06d}.tar")) as sink:
            for _ in range(count):
                sample = {"__key__": f"k{i:03d}", "jpg": good_jpeg(seed=100 + i), "cls": str(i).encode()}
                if i in bad:
                    sample = {"__key__": sample["__key__"], "cls": sample["cls"], **bad[i]}
                    sample = {k: v for k, v in sample.items() if v is not None}
                else:
                    good.append(i)
                sink.write(sample)
                i += 1
    (root / "classes.txt").write_text("".join(f"c{c}\n" for c in range(50)))
    return good


@pytest.mark.parametrize("kind", list(SHARD_BAD))
def test_shard_raise_names_the_shard_the_sample_and_the_problem(tmp_path, kind):
    parts, expected = SHARD_BAD[kind]
    write_dirty_shards(tmp_path / "s", {9: parts})
    loader = DALILoader(tmp_path / "s", batch_size=4, size=16, shuffle=False, index_dir=tmp_path / "idx")
    with pytest.raises(BadSampleError) as info:
        list(loader)
    assert str(info.value).startswith(f"{tmp_path / 's' / 's-000001.tar'} (sample k009): ")
    assert expected in str(info.value)


@pytest.mark.parametrize("shuffle", [False, True])
def test_shard_skip_delivers_every_good_sample_once(tmp_path, shuffle):
    bad = {1: SHARD_BAD["truncated"][0], 5: SHARD_BAD["html"][0], 9: SHARD_BAD["cut late"][0],
           12: SHARD_BAD["no label"][0], 16: SHARD_BAD["no image"][0], 19: SHARD_BAD["non-integer label"][0]}
    good = write_dirty_shards(tmp_path / "s", bad)
    loader = DALILoader(tmp_path / "s", batch_size=4, size=16, shuffle=shuffle, on_error="skip",
                        index_dir=tmp_path / "idx")
    for epoch in range(2):
        loader.set_epoch(epoch)
        with pytest.warns(UserWarning, match="skipped") if epoch == 0 else _no_warning():
            batches = list(loader)
        assert len(batches) == len(loader) == 5  # 20 samples: as many batches as without the bad ones
        labels = [y for _, lab in batches for y in lab.tolist()]
        assert sorted(y for y in labels if y != PAD_LABEL) == good  # every good sample once, its own label
        assert labels.count(PAD_LABEL) == len(bad)
    tar_of = {i: tmp_path / "s" / f"s-{0 if i < 7 else 1 if i < 13 else 2:06d}.tar" for i in bad}  # (7, 6, 7)
    assert sorted(loader.skipped) == sorted(f"{tar_of[i]} (sample k{i:03d})" for i in bad)


@pytest.mark.parametrize(("label", "value", "problem"), [
    (b"1" + b" " * 20, 1, None),  # padded: good, and its batch-mates keep theirs
    (b"0" * 19 + b"7", 7, None),  # 20 zero-padded digits
    (b"9" * 20, None, "label 99999999999999999999 is out of range: more digits than an int64 holds"),
    ("\u00b2".encode(), None, "is not a non-negative integer"),  # superscript two
    ("\u0661".encode(), None, "is not a non-negative integer"),  # Arabic-Indic one
    (b"1 2", None, "is not a non-negative integer"),
])
def test_a_label_is_parsed_on_its_own(tmp_path, label, value, problem):
    """An odd ``.cls`` in a batch decides nothing for the other samples of the batch: they keep their
    labels; it is read as its value, or is a bad sample named with its reason."""
    write_dirty_shards(tmp_path / "s", {9: {"jpg": good_jpeg(seed=109), "cls": label}})
    loader = DALILoader(tmp_path / "s", batch_size=4, size=8, shuffle=False, on_error="skip",
                        index_dir=tmp_path / "idx")
    with pytest.warns(UserWarning, match="skipped") if problem else _no_warning():
        labels = [y for _, lab in loader for y in lab.tolist()]
    assert labels == [i if i != 9 else (value if problem is None else PAD_LABEL) for i in range(20)]
    tar = tmp_path / "s" / "s-000001.tar"
    assert list(loader.skipped) == ([f"{tar} (sample k009)"] if problem else [])
    if problem:
        assert problem in loader.skipped[f"{tar} (sample k009)"]


def test_shard_skip_across_ranks_and_resume(tmp_path):
    bad = {2: SHARD_BAD["truncated"][0], 8: SHARD_BAD["cut late"][0], 15: SHARD_BAD["zero bytes"][0]}
    good = write_dirty_shards(tmp_path / "s", bad)
    common = dict(batch_size=3, size=16, shuffle=True, on_error="skip", index_dir=tmp_path / "idx", num_shards=2)
    seen, lengths = [], []
    for rank in range(2):
        loader = DALILoader(tmp_path / "s", shard_id=rank, **common)
        with pytest.warns(UserWarning):
            batches = list(loader)
        lengths.append(len(batches))
        seen += [y for _, lab in batches for y in lab.tolist() if y != PAD_LABEL]
    assert sorted(seen) == good and lengths[0] == lengths[1]
    # Stop rank 0 after its first batches, resume in a new loader: the rest is what an uninterrupted run gave.
    whole = DALILoader(tmp_path / "s", shard_id=0, **common)
    with pytest.warns(UserWarning):
        expected = [lab.tolist() for _, lab in whole]
    first = DALILoader(tmp_path / "s", shard_id=0, **common)
    with pytest.warns(UserWarning):
        it = iter(first)
        head = [next(it)[1].tolist() for _ in range(2)]
    resumed = DALILoader(tmp_path / "s", shard_id=0, **common)
    resumed.load_state_dict(first.state_dict())
    assert head + [lab.tolist() for _, lab in resumed] == expected


def test_shard_duplicate_keys_are_named_or_skipped(tmp_path):
    import webdataset as wds

    from dali_resizer.shards import verify_shards

    (tmp_path / "s").mkdir()
    tar = tmp_path / "s" / "s-000000.tar"
    with wds.TarWriter(str(tar)) as sink:
        for i, key in enumerate(["a", "b", "a", "c"]):  # "a" written twice, with labels 0 and 2
            sink.write({"__key__": key, "jpg": good_jpeg(seed=i), "cls": str(i).encode()})
    with pytest.raises(BadSampleError, match=r"s-000000\.tar \(member a\.(jpg|cls)\): duplicate key"):
        DALILoader(tmp_path / "s", batch_size=2, size=8, index_dir=tmp_path / "idx")
    with pytest.warns(UserWarning, match="duplicate key"):
        loader = DALILoader(tmp_path / "s", batch_size=2, size=8, index_dir=tmp_path / "idx", on_error="skip")
    assert sorted(y for _, lab in loader for y in lab.tolist()) == [0, 1, 3]  # the first "a" is read, once
    assert len(loader.skipped) == 2  # its second image and second label, named
    assert "duplicate key" in verify_shards(tmp_path / "s")
    # An index written beside the tar by `shards index` carries the same list, and the CLI says so.
    from dali_resizer.shards import main

    assert main(["index", str(tar)]) == 1
    listed = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert listed == ["s-000000.idx", "s-000000.idx.duplicates", "s-000000.tar"]
    with pytest.raises(BadSampleError, match="duplicate key"):
        DALILoader(tmp_path / "s", batch_size=2, size=8)


# -- decoded content matches PIL ---------------------------------------------------------------------


def decode_with_loader(path, size):
    """The loader's evaluation path at the image's own size (no resize, no crop), back to uint8 RGB."""
    from pipelines import IMAGENET_MEAN, IMAGENET_STD

    root = path.parent.parent
    loader = DALILoader(root, batch_size=1, size=size, train=False, crop_ratio=1.0, shuffle=False)
    (images, _), = list(loader)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((images[0] * std + mean) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def blocky(seed=0, h=48, w=64):
    rng = np.random.default_rng(seed)
    return Image.fromarray(np.kron(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8),
                                   np.ones((8, 8, 1), dtype=np.uint8)))


@pytest.mark.parametrize(
    ("name", "convert", "fmt", "tolerance"),
    [
        ("gray.jpg", "L", "JPEG", 1),
        ("cmyk.jpg", "CMYK", "JPEG", 1),
        ("rgba.png", "RGBA", "PNG", 1),
        ("palette.png", "P", "PNG", 1),
        ("png_named.jpg", "RGB", "PNG", 1),
        ("webp_named.jpg", "RGB", "WEBP", 1),
        ("image.bmp", "RGB", "BMP", 1),
        ("image.tif", "RGB", "TIFF", 1),
    ],
)
def test_colour_models_and_formats_decode_like_pil(tmp_path, name, convert, fmt, tolerance):
    (tmp_path / "x").mkdir()
    path = tmp_path / "x" / name
    options = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    blocky().convert(convert).save(path, format=fmt, **options)
    expected = np.asarray(Image.open(path).convert("RGB"))
    got = decode_with_loader(path, (48, 64))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= tolerance


def test_exif_orientation_is_applied(tmp_path):
    (tmp_path / "x").mkdir()
    path = tmp_path / "x" / "rotated.jpg"
    image = blocky()
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(path, format="JPEG", exif=exif, quality=95)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert expected.shape == (64, 48, 3)
    got = decode_with_loader(path, (64, 48))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    (tmp_path / "x").mkdir()
    path = tmp_path / "x" / "deep.png"
    gray8 = np.asarray(blocky().convert("L"))
    Image.fromarray(gray8.astype(np.uint16) * 257).save(path)  # full 16-bit range
    got = decode_with_loader(path, (48, 64))
    assert np.abs(got.astype(int) - gray8[..., None].astype(int)).max() <= 1


def test_one_pixel_image(tmp_path):
    (tmp_path / "x").mkdir()
    Image.new("RGB", (1, 1), (200, 40, 10)).save(tmp_path / "x" / "dot.png")
    for train in (True, False):
        (images, labels), = list(DALILoader(tmp_path, batch_size=1, size=(5, 7), train=train))
        assert images.shape == (1, 3, 5, 7) and torch.isfinite(images).all()


# -- fuzz ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_fuzzed_jpegs_never_hang_or_crash(tmp_path, layout):
    """Mutated JPEG bytes through the real decode path, in a child process with a time limit: each
    sample either decodes or is reported by name; the interpreter never dies."""
    import subprocess
    import sys

    import webdataset as wds

    rng = random.Random(1234)
    seed_bytes = good_jpeg(seed=5, h=40, w=56)
    mutated = []
    for _ in range(40):
        data = bytearray(seed_bytes)
        for _ in range(rng.randint(1, 12)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.6:
                data[pos] = rng.randrange(256)
            elif op < 0.8:
                del data[pos : pos + rng.randint(1, 64)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        mutated.append(bytes(data))
    source = tmp_path / "data"
    source.mkdir()
    if layout == "folder":
        (source / "c").mkdir()
        for n, data in enumerate(mutated):
            (source / "c" / f"{n:03d}.jpg").write_bytes(data)
    else:
        for shard in range(2):
            with wds.TarWriter(str(source / f"s-{shard:06d}.tar")) as sink:
                for n in range(shard * 20, shard * 20 + 20):
                    sink.write({"__key__": f"k{n:03d}", "jpg": mutated[n], "cls": b"0"})
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from dali_resizer import DALILoader\n"
        "loader = DALILoader(sys.argv[1], batch_size=8, size=16, on_error='skip', num_threads=2,\n"
        "                    index_dir=sys.argv[2])\n"
        "n = sum(int((y >= 0).sum()) for _, y in loader)\n"
        "print(n, len(loader.skipped))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(source), str(tmp_path / "idx")], capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    delivered, skipped = map(int, out.stdout.split())
    assert delivered + skipped == 40 and skipped > 0


# -- python -m dali_resizer.check -----------------------------------------------------------------


def test_check_lists_problems_by_kind_and_writes_a_clean_list(tmp_path, capsys):
    from dali_resizer.check import main

    root = make_folder(tmp_path / "data", "2_bad.jpg", BAD["html"]())
    (root / "b" / "3_empty.jpg").write_bytes(b"")
    (root / "a" / "notes.txt").write_text("x")
    (root / "a" / ".hidden.jpg").write_bytes(good_jpeg(seed=99))
    (root / "c").mkdir()  # an empty class folder
    (root / "a" / "link.jpg").symlink_to(root / "nowhere.jpg")
    clean = tmp_path / "clean.txt"
    assert main([str(root), "--write-list", str(clean)]) == 1
    out = capsys.readouterr().out
    assert "cannot be decoded: 2" in out and "2_bad.jpg: HTML/XML text" in out and "3_empty.jpg: empty file" in out
    assert "not an image extension (ignored): 1" in out and "notes.txt" in out
    assert "hidden image file (read as a sample): 1" in out
    assert "empty class folder (the loader refuses it): 1" in out
    assert "broken symbolic link: 1" in out

    (root / "c" / "0.jpg").write_bytes(good_jpeg(seed=7))  # (the list keeps the folder's classes)
    loader = DALILoader(clean, batch_size=4, size=16, return_index=True, on_error="raise")
    assert loader.classes == ["a", "b", "c"]
    names = [os.path.relpath(f, root) for f in loader.dataset.files]
    assert "b/2_bad.jpg" not in names and "b/3_empty.jpg" not in names and "a/.hidden.jpg" in names
    assert len(names) == 11
    got = [(loader.dataset.files[i], y) for _, labels, idx in loader for i, y in zip(idx.tolist(), labels.tolist())]
    assert all(y == "abc".index(os.path.relpath(f, root)[0]) for f, y in got)  # labels of the whole folder


def test_check_shards(tmp_path, capsys):
    import webdataset as wds

    from dali_resizer.check import main
    from dali_resizer.readers.wds_index import build_index

    tar = tmp_path / "s-000000.tar"
    with wds.TarWriter(str(tar)) as sink:
        sink.write({"__key__": "good", "jpg": good_jpeg(), "cls": b"0"})
        sink.write({"__key__": "bad", "jpg": b"<html></html>", "cls": b"1"})
        sink.write({"__key__": "gif", "jpg": encode(Image.new("RGB", (8, 8)), "GIF"), "cls": b"1"})  # PIL reads it
    build_index(tar, tmp_path / "s-000000.idx")
    (tmp_path / "classes.txt").write_text("x\ny\n")
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "cannot be decoded: 2" in out and "bad.jpg: HTML/XML text" in out
    assert "gif.jpg: GIF image (DALI does not decode GIF)" in out


def test_not_a_file_list(tmp_path):
    (tmp_path / "list.txt").write_text("a/1.jpg\n")
    with pytest.raises(ValueError, match="file source must be"):
        DALILoader(tmp_path / "list.txt", batch_size=2)


def test_shard_label_out_of_range(tmp_path):
    import webdataset as wds

    shards = tmp_path / "shards"
    shards.mkdir()
    with wds.TarWriter(str(shards / "s-000000.tar")) as sink:
        sink.write({"__key__": "a", "jpg": good_jpeg(), "cls": b"0"})
        sink.write({"__key__": "b", "jpg": good_jpeg(seed=1), "cls": b"5"})
    (shards / "classes.txt").write_text("x\ny\n")
    with pytest.raises(BadSampleError, match="label 5 is out of range for the 2 classes"):
        list(DALILoader(shards, batch_size=2, size=8, index_dir=tmp_path / "idx"))


def test_skip_in_evaluation_passes_that_are_rewound(tmp_path):
    root = make_folder(tmp_path, "2_bad.jpg", BAD["html"]())
    loader = DALILoader(root, batch_size=4, size=16, train=False, on_error="skip", return_index=True)
    bad_index = loader.dataset.files.index(str(root / "b" / "2_bad.jpg"))
    for _ in range(3):  # the pass that met the bad file, then kept/rewound or rebuilt pipelines
        with pytest.warns(UserWarning) if not loader.skipped else _no_warning():
            indices = [i for _, _, idx in loader for i in idx.tolist()]
        assert sorted(i for i in indices if i >= 0) == sorted(set(range(11)) - {bad_index})


def test_image_over_max_pixels_is_named_or_skipped_without_decoding(tmp_path):
    root = make_folder(tmp_path)
    Image.new("RGB", (300, 200), (10, 200, 30)).save(root / "b" / "2_large.jpg")  # 60,000 pixels
    with pytest.raises(BadSampleError, match=r"2_large\.jpg: image over max_pixels=10,000"):
        list(DALILoader(root, batch_size=4, size=16, max_pixels=10_000))
    loader = DALILoader(root, batch_size=4, size=16, max_pixels=10_000, on_error="skip", return_index=True)
    with pytest.warns(UserWarning, match="2_large.jpg"):
        indices = [i for _, _, idx in loader for i in idx.tolist()]
    large = loader.dataset.files.index(str(root / "b" / "2_large.jpg"))
    assert sorted(i for i in indices if i >= 0) == sorted(set(range(11)) - {large}) and indices.count(-1) == 1
    assert "over max_pixels" in loader.skipped[str(root / "b" / "2_large.jpg")]
    assert len([i for _, _, idx in DALILoader(root, batch_size=4, size=16, max_pixels=None, return_index=True)
                for i in idx.tolist()]) == 11  # no limit: read as usual


def test_check_flags_images_over_max_pixels_without_decoding(tmp_path, monkeypatch, capsys):
    from dali_resizer import check

    root = make_folder(tmp_path / "data")
    Image.new("RGB", (300, 200)).save(root / "a" / "wide.png")
    monkeypatch.setattr(check, "MAX_PIXELS", 10_000)
    problems, good = check.check_folder(root)
    assert problems["over the loader's max_pixels=10,000 (not decoded)"] == [f"{root / 'a' / 'wide.png'} (300x200)"]
    assert str(root / "a" / "wide.png") not in good and len(good) == 10


@pytest.mark.parametrize("kind", ["truncated", "html"])  # found while decoding / before decoding
def test_skip_warnings_point_at_the_loop_that_met_the_sample(tmp_path, kind):
    root = make_folder(tmp_path, "2_bad.jpg", BAD[kind]())
    loader = DALILoader(root, batch_size=4, size=16, shuffle=False, on_error="skip")
    with pytest.warns(UserWarning, match="2_bad.jpg") as record:
        for _ in loader:
            pass
    assert [w.filename for w in record if "2_bad.jpg" in str(w.message)] == [__file__]


@pytest.mark.parametrize("kind", ["truncated", "cut late", "no label"])  # replayed / named by DALI / by the labels
def test_shard_skip_warnings_point_at_the_loop_that_met_the_sample(tmp_path, kind):
    write_dirty_shards(tmp_path / "s", {9: SHARD_BAD[kind][0]})
    loader = DALILoader(tmp_path / "s", batch_size=4, size=16, on_error="skip", index_dir=tmp_path / "idx")
    with pytest.warns(UserWarning, match="k009") as record:
        for _ in loader:
            pass
    assert [w.filename for w in record if "k009" in str(w.message)] == [__file__]


def test_check_names_what_decodes_wrongly_or_not_at_all_in_dali(tmp_path, capsys):
    """Images PIL reads and DALI does not (12-bit JPEG, 1-bit TIFF), a JPEG whose header promises a
    huge image its data does not hold, and a JPEG cut short; one that libjpeg-turbo decodes with a
    warning of corrupt data is named as a note and listed as good, since the loader reads it (as PIL
    does). What the decoders print stays off the terminal."""
    from dali_resizer.check import DAMAGED, check_folder

    root = make_folder(tmp_path / "data")
    for kind in ("declares 12000x12000", "12-bit jpeg", "1-bit tiff"):
        (root / "a" / f"{kind.replace(' ', '_')}.jpg").write_bytes(BAD[kind]())
    jpeg = good_jpeg(h=64, w=64)
    (root / "b" / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 3 // 4])
    (root / "b" / "extra.jpg").write_bytes(jpeg[:-2] + b"\x13\x37\x42" + jpeg[-2:])  # decodes, with a warning
    capsys.readouterr()
    problems, good = check_folder(root)
    bad = "\n".join(problems["cannot be decoded"])
    for kind in ("declares 12000x12000", "12-bit jpeg", "1-bit tiff"):
        assert f"{kind.replace(' ', '_')}.jpg: {EXPECT[kind]}" in bad
    assert ("cut.jpg: truncated JPEG (no end-of-image marker); DALI: " in bad
            and "(decoder: [libjpeg_turbo_decoder] Could not decode jpeg code stream - Premature end" in bad)
    assert len(problems["cannot be decoded"]) == 4 and len(good) == 11
    (damaged,) = problems[DAMAGED]
    assert damaged.startswith(f"{root / 'b' / 'extra.jpg'}: JPEG image, decoded with the decoder's warning "
                              f"\"Corrupt JPEG data: ")
    assert str(root / "b" / "extra.jpg") in good
    assert "[ERROR]" not in capsys.readouterr().err  # the codec's own lines stay off the terminal
    for bad_file in ("declares_12000x12000", "12-bit_jpeg", "1-bit_tiff"):
        (root / "a" / f"{bad_file}.jpg").unlink()
    (root / "b" / "cut.jpg").unlink()
    loader = DALILoader(root, batch_size=4, size=8, return_index=True)  # what check calls good, the loader reads
    assert sorted(int(i) for _, _, indices in loader for i in indices) == list(range(11))


def test_symbolic_link_loops_are_listed_as_imagefolder_lists_them_and_said(tmp_path, capsys):
    from torchvision.datasets import ImageFolder

    from dali_resizer.check import check_folder

    root = make_folder(tmp_path / "data", per_class=2)
    (root / "a" / "up").symlink_to("..")
    with pytest.warns(UserWarning, match=r"1 symbolic link loop\(s\) \(.*a/up -> .*data\)"):
        loader = DALILoader(root, batch_size=4)
    assert len(loader.dataset) == len(ImageFolder(str(root))) > 4  # the same (multiplied) listing
    problems, _ = check_folder(root)
    assert problems["symbolic link loop (its files are listed again at every level, as ImageFolder lists them)"] == [
        f"{root / 'a' / 'up'} -> {root}"]


def test_a_class_folder_linked_to_another_is_read_as_imagefolder_reads_it_and_check_says_so(tmp_path):
    from torchvision.datasets import ImageFolder

    from dali_resizer.check import check_folder

    root = make_folder(tmp_path / "data", per_class=2)
    (root / "c").symlink_to(root / "a")
    loader = DALILoader(root, batch_size=4, return_index=True)
    assert loader.dataset.samples == ImageFolder(str(root)).samples  # a's images twice, under labels 0 and 2
    problems, _ = check_folder(root)
    (kind,) = [k for k in problems if k.startswith("class folder that is a link")]
    assert problems[kind] == [f"{root / 'c'} -> {root / 'a'}"]


def test_a_line_break_in_a_file_name_is_kept_out_of_the_list(tmp_path, capsys):
    from dali_resizer.check import main

    root = make_folder(tmp_path / "data", per_class=2)
    (root / "a" / "new\nline.jpg").write_bytes(good_jpeg())
    assert main([str(root), "--write-list", str(tmp_path / "list.txt")]) == 1
    assert "line break in the file name" in capsys.readouterr().out
    listed = DALILoader(tmp_path / "list.txt", batch_size=2)
    assert len(listed.dataset) == 4 and len(DALILoader(root, batch_size=2).dataset) == 5


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_the_flattest_jpegs_stay_within_the_cut_short_bound(mode):
    """A uniform image, progressive, at the lowest quality: the fewest bytes a pixel libjpeg writes
    (about 255 pixels a byte in grey). Far from JPEG_MAX_PIXELS_PER_BYTE, so no real JPEG is taken
    for one cut short."""
    from dali_resizer.samples import JPEG_MAX_PIXELS_PER_BYTE, jpeg_cut_short

    data = encode_with(Image.new(mode, (2048, 2048), 128), quality=1, progressive=True, optimize=True)
    pixels_per_byte = 2048 * 2048 / len(data)
    assert 100 < pixels_per_byte < JPEG_MAX_PIXELS_PER_BYTE / 8
    assert jpeg_cut_short(data, len(data)) is None


def encode_with(image, **options) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", **options)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["random bytes", "zero bytes", "html", "gif named jpg", "declares 12000x12000"])
def test_the_loader_and_check_name_a_file_with_one_diagnosis(tmp_path, kind):
    """What the pipeline refuses before decoding (its status), the loader names with the same words as
    ``check``, which reads the file's bytes without a pipeline (``samples.problem_of`` for both)."""
    from dali_resizer.check import check_folder

    root = make_folder(tmp_path, "2_bad.jpg", BAD[kind]())
    path = str(root / "b" / "2_bad.jpg")
    loader = DALILoader(root, batch_size=4, size=16, on_error="skip")
    with pytest.warns(UserWarning, match="2_bad.jpg"):
        list(loader)
    problems, _ = check_folder(root)
    assert f"{path}: {loader.skipped[path]}" in problems["cannot be decoded"]
    assert EXPECT[kind] in loader.skipped[path]


def _png_with_a_broken_stream() -> bytes:
    data = bytearray(encode(random_image(np.random.default_rng(5), 20, 30), "PNG"))
    data[data.find(b"IDAT") + 10] ^= 0xFF  # (inside the zlib stream: libpng refuses it)
    return bytes(data)


def _jpeg_with_a_bogus_huffman_table() -> bytes:
    data = bytearray(good_jpeg(h=64, w=64))
    at = data.find(b"\xff\xc4")
    data[at + 5 : at + 21] = b"\xff" * 16
    return bytes(data)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_the_decoders_own_reason_is_in_the_error_that_names_the_file(tmp_path, on_error):
    """DALI says only "Failed to decode sample #1"; the decoding library prints its reason on stderr.
    The loader's error (or skip warning) carries that reason beside the file's name."""
    root = make_folder(tmp_path / "data", "2_bad.png", _png_with_a_broken_stream())
    (root / "a" / "9_bad.jpg").write_bytes(_jpeg_with_a_bogus_huffman_table())
    loader = DALILoader(root, batch_size=4, size=16, on_error=on_error)
    if on_error == "raise":
        with pytest.raises(BadSampleError, match=r"9_bad\.jpg: JPEG image; DALI: .*\(decoder: Bogus Huffman table "
                                                 r"definition\)"):
            list(loader)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(loader)
    assert loader.skipped[str(root / "a" / "9_bad.jpg")].endswith("(decoder: Bogus Huffman table definition)")
    assert "(decoder: libpng error: " in loader.skipped[str(root / "b" / "2_bad.png")]
