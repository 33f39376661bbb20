import hashlib

from PIL import Image

from dali_resizer import DALILoader, make_synthetic_folder

SMALL = dict(num_classes=3, images_per_class=4, min_side=40, max_side=70)


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.jpg")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_and_labelled(tmp_path):
    a = make_synthetic_folder(tmp_path / "a", **SMALL)
    b = make_synthetic_folder(tmp_path / "b", **SMALL)
    assert digest(a) == digest(b)
    assert digest(a) != digest(make_synthetic_folder(tmp_path / "c", **SMALL, seed=1))
    assert sorted(p.name for p in a.iterdir() if p.is_dir()) == ["class_000", "class_001", "class_002"]
    sizes = [Image.open(p).size for p in a.rglob("*.jpg")]
    assert len(sizes) == 12
    assert all(max(s) >= 40 and max(s) <= 70 for s in sizes)
    assert len(set(sizes)) > 1  # varied sizes and aspect ratios, like ImageNet


def test_cached_folder_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("DALI_RESIZER_CACHE", str(tmp_path))
    first = make_synthetic_folder(**SMALL)
    assert first.parent == tmp_path and (first / ".complete").is_file()
    stamp = {p: p.stat().st_mtime_ns for p in first.rglob("*.jpg")}
    assert make_synthetic_folder(**SMALL) == first
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*.jpg")} == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_loader_reads_it(tmp_path):
    root = make_synthetic_folder(tmp_path / "s", **SMALL)
    loader = DALILoader(root, batch_size=5, size=32)
    assert loader.classes == ["class_000", "class_001", "class_002"]
    assert sorted(y for _, labels in loader for y in labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
