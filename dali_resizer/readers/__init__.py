"""What a loader reads, one module per source kind, behind one interface (:class:`Reader`).

- :mod:`~dali_resizer.readers.folder`: an image folder (``root/<class>/<image>``, torchvision's
  ``ImageFolder`` listing) or a file list of one;
- :mod:`~dali_resizer.readers.webdataset`: WebDataset ``.tar`` shards, each read with a DALI index
  (:mod:`~dali_resizer.readers.wds_index`).

:func:`open_source` resolves what the user passed to a source listing (``len``, ``classes``,
``class_to_idx``); ``source.reader(plan, ledger)`` gives the reader a loader iterates. Where the
bytes live is :mod:`dali_resizer.storage`'s concern, apart from the source kind.
"""

from __future__ import annotations

import os

from dali_resizer.readers.base import Reader, ReadPlan, Restart
from dali_resizer.readers.folder import FILE_LIST_HEADER, FolderReader, ImageFolderSource
from dali_resizer.readers.webdataset import ShardReader, ShardSource, default_cache_dir, default_index_dir
from dali_resizer.storage import storage_for

__all__ = ["FILE_LIST_HEADER", "FolderReader", "ImageFolderSource", "ReadPlan", "Reader", "Restart", "ShardReader",
           "ShardSource", "default_cache_dir", "default_index_dir", "is_image_dataset", "open_source"]


def _expand_shard_pattern(pattern: str) -> list[str]:
    import braceexpand  # installed with webdataset

    return list(braceexpand.braceexpand(pattern))


def is_image_dataset(source) -> bool:
    """A torchvision ``DatasetFolder`` (``ImageFolder`` among them) given as the source."""
    if isinstance(source, (str, os.PathLike, list, tuple)):
        return False
    from torchvision.datasets import DatasetFolder

    return isinstance(source, DatasetFolder)


def open_source(
    source: str | os.PathLike | list[str | os.PathLike] | tuple[str | os.PathLike, ...],
    index_dir: str | os.PathLike | None = None,
) -> ImageFolderSource | ShardSource:
    """Resolves what the user passed: a torchvision ``ImageFolder`` / ``DatasetFolder``, an image
    folder, a folder of ``.tar`` shards, one ``.tar``, a list of tars, a brace pattern such as
    ``train-{000000..000127}.tar``, or a file list written by ``python -m dali_resizer.check --write-list``."""
    if is_image_dataset(source):
        return ImageFolderSource.from_dataset(source)
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("source is an empty list of shards")
        return ShardSource.from_paths([os.fspath(p) for p in source], index_dir)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"source must be a path, a list of shard paths or a brace pattern, got {source!r}")
    path = os.fspath(source)
    if "{" in path and ".." in path:
        return ShardSource.from_paths(_expand_shard_pattern(path), index_dir)
    storage = storage_for(path)
    if not storage.exists(path):
        raise FileNotFoundError(f"source not found: {path}")
    if storage.is_file(path):
        if path.endswith(".tar"):
            return ShardSource.from_paths([path], index_dir)
        if storage.read(path, 0, len(FILE_LIST_HEADER)) == FILE_LIST_HEADER.encode():
            return ImageFolderSource.from_list(path)
        raise ValueError(f"{path}: a file source must be a WebDataset .tar shard or a dali_resizer file list")
    here = storage.files_here(path)
    tars = sorted(p for p in here if p.endswith(".tar"))
    if tars:
        return ShardSource.from_paths(tars, index_dir, whole_folder=True)
    compressed = [p for p in here if p.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst"))]
    if compressed and not storage.subdirs(path):
        raise ValueError(f"{path}: holds compressed tars ({compressed[0].rpartition('/')[2]}"
                         f"{' ...' if len(compressed) > 1 else ''}), which DALI does not read (it reads a member at "
                         f"its offset); decompress them (`gunzip`, `unzstd`), or write shards with "
                         f"`python -m dali_resizer.shards make`")
    return ImageFolderSource.scan(path)
