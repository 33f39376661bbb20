"""Writing WebDataset shards (with their DALI index files) from an image folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dali_resizer.sources import CLASSES_FILE, SHARD_IMAGE_KEYS, ImageFolderSource, build_index

__all__ = ["write_shards"]


def write_shards(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    samples_per_shard: int = 1000,
    prefix: str = "shard",
    shuffle: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Writes ``folder`` (an ImageFolder) as ``<out_dir>/<prefix>-NNNNNN.tar`` shards plus, beside each,
    its DALI index ``.idx``, and ``classes.txt`` with the class names in label order.

    Each sample is ``<key>.<jpg|jpeg|png|webp>`` (the file's bytes, not re-encoded) and ``<key>.cls``
    (the label as ASCII digits). ``shuffle`` writes the samples in a seeded random order, since
    readers of shards read sequentially and shuffle only within a buffer.

    Returns the shard paths.
    """
    import webdataset as wds

    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    source = ImageFolderSource.scan(folder)
    bad = [f for f in source.files if Path(f).suffix.lower().lstrip(".") not in SHARD_IMAGE_KEYS]
    if bad:
        raise ValueError(f"{bad[0]}: shards hold {', '.join(SHARD_IMAGE_KEYS)} images only ({len(bad)} file(s) affected)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(source)) if shuffle else np.arange(len(source))
    paths = []
    for shard, start in enumerate(range(0, len(order), samples_per_shard)):
        path = out_dir / f"{prefix}-{shard:06d}.tar"
        tmp = path.with_name(path.name + ".tmp")
        with wds.TarWriter(str(tmp)) as sink:
            for i in order[start : start + samples_per_shard]:
                file = source.files[i]
                sink.write({
                    "__key__": f"{i:09d}",
                    Path(file).suffix.lower().lstrip("."): Path(file).read_bytes(),
                    "cls": str(int(source.targets[i])).encode(),
                })
        os.replace(tmp, path)
        build_index(path, path.with_suffix(".idx"))
        paths.append(path)
    (out_dir / CLASSES_FILE).write_text("".join(f"{name}\n" for name in source.classes))
    return paths
