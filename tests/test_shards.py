import tarfile

import pytest

from dali_resizer import DALILoader
from dali_resizer.shards import write_shards


def test_write_shards_round_trip(image_folder, tmp_path):
    paths = write_shards(image_folder, tmp_path / "out", samples_per_shard=4, prefix="train")
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert all(p.with_suffix(".idx").is_file() for p in paths)
    folder = DALILoader(image_folder, batch_size=4, size=8)
    shards = DALILoader(tmp_path / "out", batch_size=4, size=8, index_dir=tmp_path / "unused")
    assert not (tmp_path / "unused").exists()  # the indexes beside the tars were used
    assert shards.classes == folder.classes
    assert len(shards.source) == len(folder.source) == 11
    got = sorted(int(y) for _, labels in shards for y in labels)
    assert got == sorted(folder.source.targets.tolist())


def test_shards_keep_the_original_bytes(image_folder, tmp_path):
    (path,) = write_shards(image_folder, tmp_path, samples_per_shard=100, shuffle=False)
    with tarfile.open(path) as tar:
        names = tar.getnames()
        first = tar.extractfile("000000000.jpg").read()
        label = tar.extractfile("000000000.cls").read()
    assert sorted(names[:2]) == ["000000000.cls", "000000000.jpg"]
    assert label == b"0"
    source = DALILoader(image_folder, batch_size=1).source
    assert first == open(source.files[0], "rb").read()


def test_unsupported_image_type_is_named(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.bmp")
    with pytest.raises(ValueError, match=r"x\.bmp: shards hold jpg, jpeg, png, webp"):
        write_shards(tmp_path, tmp_path / "out")
