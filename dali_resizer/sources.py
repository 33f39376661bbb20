"""What a loader reads: an image folder (listed like torchvision's ``ImageFolder``) or WebDataset shards."""

from __future__ import annotations

import hashlib
import os
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "FILE_LIST_HEADER",
    "IMG_EXTENSIONS",
    "ImageFolderSource",
    "ShardSource",
    "build_index",
    "default_cache_dir",
    "index_problem",
    "open_source",
    "read_tar_member",
    "sample_key",
    "standin_index",
]

# torchvision.datasets.folder.IMG_EXTENSIONS; DALI decodes all of them.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CLASSES_FILE = "classes.txt"
FILE_LIST_HEADER = "# dali_resizer file list v1"
DUPLICATES_SUFFIX = ".duplicates"  # beside an index: the members build_index left out as duplicate keys


def default_cache_dir() -> Path:
    """``$DALI_RESIZER_CACHE``, else ``$XDG_CACHE_HOME/dali_resizer``, else ``~/.cache/dali_resizer``."""
    if "DALI_RESIZER_CACHE" in os.environ:
        return Path(os.environ["DALI_RESIZER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dali_resizer"


def default_index_dir() -> Path:
    """Where the loader builds the WebDataset indexes that are missing beside their tars."""
    return default_cache_dir() / "wds-index"


@dataclass(frozen=True)
class ImageFolderSource:
    """An ImageFolder layout: ``root/<class>/**/<image>``; labels index the sorted class names."""

    root: Path
    files: list[str]
    targets: np.ndarray  # (num_samples,) int64
    classes: list[str]
    class_to_idx: dict[str, int] = field(repr=False)

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def scan(cls, root: str | os.PathLike) -> ImageFolderSource:
        """Lists ``root`` exactly as ``torchvision.datasets.ImageFolder`` does (same classes, same order)."""
        root = Path(root)
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        if not classes:
            raise ValueError(f"{root}: no class folders found; expected the layout {root}/<class>/<image>")
        class_to_idx = {name: i for i, name in enumerate(classes)}
        files: list[str] = []
        targets: list[int] = []
        empty: list[str] = []
        for name in classes:
            before = len(files)
            for dirpath, _, fnames in sorted(os.walk(root / name, followlinks=True)):
                for fname in sorted(fnames):
                    if fname.lower().endswith(IMG_EXTENSIONS):
                        files.append(os.path.join(dirpath, fname))
                        targets.append(class_to_idx[name])
            if len(files) == before:
                empty.append(name)
        if empty:
            shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
            raise ValueError(
                f"{root}: {len(empty)} class folder(s) hold no image ({shown}); "
                f"supported extensions: {', '.join(IMG_EXTENSIONS)}"
            )
        return cls(root, files, np.asarray(targets, dtype=np.int64), classes, class_to_idx)

    @classmethod
    def from_list(cls, list_path: str | os.PathLike) -> ImageFolderSource:
        """Reads a file list written by ``python -m dali_resizer.check --write-list``: a subset of an
        image folder, with the classes and labels of the whole folder (so labels never shift)."""
        lines = Path(list_path).read_text().splitlines()
        if len(lines) < 2 or lines[0] != FILE_LIST_HEADER or not lines[1].startswith("# root: "):
            raise ValueError(f"{list_path}: not a dali_resizer file list (expected {FILE_LIST_HEADER!r} and '# root:')")
        root = Path(lines[1][len("# root: "):])
        if not root.is_dir():
            raise FileNotFoundError(f"{list_path}: its root {root} does not exist")
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        class_to_idx = {name: i for i, name in enumerate(classes)}
        files, targets = [], []
        for number, rel in enumerate(lines[2:], start=3):
            if not rel.strip():
                continue
            top = rel.split("/", 1)[0]
            if top not in class_to_idx or "/" not in rel:
                raise ValueError(f"{list_path}:{number}: {rel!r} is not inside a class folder of {root}")
            files.append(str(root / rel))
            targets.append(class_to_idx[top])
        if not files:
            raise ValueError(f"{list_path}: lists no images")
        return cls(root, files, np.asarray(targets, dtype=np.int64), classes, class_to_idx)


@dataclass(frozen=True)
class ShardSource:
    """WebDataset tar shards, each with a DALI index file, and the sample count of each shard."""

    paths: list[str]
    index_paths: list[str]
    counts: list[int]
    classes: list[str] | None = None
    # tar -> members left out of its index because their sample key and extension came before
    # (only known for indexes built by build_index, which records them beside the index)
    duplicates: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(self.counts)

    @property
    def class_to_idx(self) -> dict[str, int] | None:
        return None if self.classes is None else {name: i for i, name in enumerate(self.classes)}

    @classmethod
    def from_paths(cls, paths: list[str], index_dir: str | os.PathLike | None = None) -> ShardSource:
        """Uses ``<shard>.idx`` beside each tar, or builds a missing index once into ``index_dir``."""
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise FileNotFoundError(f"shard not found: {missing[0]}{more}")
        index_paths = [_index_for(p, index_dir) for p in paths]
        counts = [_read_index_count(p) for p in index_paths]
        classes_file = Path(paths[0]).parent / CLASSES_FILE
        classes = classes_file.read_text().splitlines() if classes_file.is_file() else None
        duplicates = {}
        for tar, index in zip(paths, index_paths):
            if os.path.isfile(index + DUPLICATES_SUFFIX):
                duplicates[tar] = Path(index + DUPLICATES_SUFFIX).read_text().splitlines()
        return cls(list(paths), index_paths, counts, classes, duplicates)


def build_index(tar_path: str | os.PathLike, index_path: str | os.PathLike) -> int:
    """Writes DALI's WebDataset index (format v1.2) for ``tar_path``; returns the sample count.

    Members are grouped into samples by the name before the first dot of the file name, as
    webdataset does; hidden files and non-regular members are left out, as DALI does. A member whose
    key and extension were already seen (a duplicate key) is left out of the index, not merged, and
    listed in ``<index_path>.duplicates`` for the loader and the checks to report.
    """
    samples: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    duplicates: list[str] = []
    with tarfile.open(tar_path, mode="r:") as tar:
        for member in tar:
            base = os.path.basename(member.name)
            if not member.isfile() or base.startswith(".") or "." not in base:
                continue
            stem, ext = base.split(".", 1)
            if any(c.isspace() for c in member.name):
                raise ValueError(
                    f"{tar_path}: member name {member.name!r} contains whitespace, which the index cannot hold")
            key = os.path.join(os.path.dirname(member.name), stem)
            if (key, ext.lower()) in seen:
                duplicates.append(member.name)
                continue
            seen.add((key, ext.lower()))
            samples.setdefault(key, []).append(f"{ext} {member.offset_data} {member.size} {member.name}")
    _write_atomic(f"{os.fspath(index_path)}{DUPLICATES_SUFFIX}", "".join(f"{name}\n" for name in duplicates) or None)
    _write_atomic(index_path, f"v1.2 {len(samples)}\n" + "".join(" ".join(c) + "\n" for c in samples.values()))
    return len(samples)


def _write_atomic(path: str | os.PathLike, text: str | None) -> None:
    """Writes ``text`` to ``path`` through a rename (a concurrent reader sees the old file or the whole
    new one); ``None`` removes ``path``."""
    if text is None:
        Path(path).unlink(missing_ok=True)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def sample_key(member: str) -> str:
    """A tar member's WebDataset sample key: its path up to the first dot of its file name."""
    return os.path.join(os.path.dirname(member), os.path.basename(member).split(".", 1)[0])


def read_tar_member(tar_path: str | os.PathLike, offset: int) -> tuple[str, bytes]:
    """The name and bytes of the member whose data starts at ``offset`` (as DALI's index and source
    names give it), read through its tar header."""
    with open(tar_path, "rb") as f:
        f.seek(offset - tarfile.BLOCKSIZE)
        info = tarfile.TarInfo.frombuf(f.read(tarfile.BLOCKSIZE), tarfile.ENCODING, "surrogateescape")
        return info.name, f.read(info.size)


def standin_index(index_path: str, keys: set[str], out_dir: str | os.PathLike) -> str:
    """A copy of a DALI index in which the samples ``keys`` read the image of another sample of the same
    tar, under their own names; returns its path (written once into ``out_dir``).

    The loader reads it instead of the original once those samples are known to be bad: the reader
    still counts them (so positions, checkpoints and batch counts do not move), nothing fails on them,
    and their rows are recognised by name and marked as padding.
    """
    digest = hashlib.sha1("\n".join([os.path.abspath(index_path), *sorted(keys)]).encode()).hexdigest()[:16]
    out = Path(out_dir) / f"{Path(index_path).stem}-standin-{digest}.idx"
    if out.is_file() and out.stat().st_mtime_ns >= os.stat(index_path).st_mtime_ns:
        return str(out)
    lines = Path(index_path).read_text().splitlines()
    rows = [line.split() for line in lines[1:]]

    def image(row):
        return next((i for i in range(0, len(row), 4) if row[i].lower() in SHARD_IMAGE_KEYS), None)

    donor = next((row for row in rows if sample_key(row[3]) not in keys and image(row) is not None), None)
    if donor is None:
        raise ValueError(f"{index_path}: no good image is left in this shard to stand in for its bad samples")
    i = image(donor)
    for row in rows:
        key = sample_key(row[3])
        if key in keys:
            j = image(row)
            if j is None:  # a sample without an image gets one (the donor's), named after it
                row += [donor[i], donor[i + 1], donor[i + 2], f"{key}.{donor[i]}"]
            else:
                row[j + 1 : j + 3] = donor[i + 1 : i + 3]
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, lines[0] + "\n" + "".join(" ".join(row) + "\n" for row in rows))
    return str(out)


def index_problem(tar_path: str | os.PathLike, index_path: str | os.PathLike) -> str | None:
    """A cheap check that an index still describes its tar: ``None`` when it looks current, else why not.

    Reads only the index's first and last lines, so it costs little at thousands of shards; the full
    comparison is ``python -m dali_resizer.shards verify``.
    """
    tar_stat, index_stat = os.stat(tar_path), os.stat(index_path)
    if index_stat.st_mtime_ns < tar_stat.st_mtime_ns:
        return "the index is older than its tar"
    with open(index_path, "rb") as f:
        header = f.readline().split()
        f.seek(max(0, index_stat.st_size - 65536))
        tail = f.read().splitlines()
    if len(header) != 2 or not header[0].startswith(b"v1.") or not header[1].isdigit():
        return "not a DALI WebDataset index"
    if int(header[1]) == 0:
        return None
    last = tail[-1].split() if tail else []
    try:
        ends = [int(last[i + 1]) + int(last[i + 2]) for i in range(0, len(last), 4)]
    except (ValueError, IndexError):
        return "its last line is not a sample"
    if not ends or max(ends) > tar_stat.st_size:
        return f"it points past the end of the tar ({max(ends, default=0)} > {tar_stat.st_size} bytes)"
    return None


def _index_for(tar_path: str, index_dir: str | os.PathLike | None) -> str:
    beside = os.path.splitext(tar_path)[0] + ".idx"
    if os.path.isfile(beside):
        problem = index_problem(tar_path, beside)
        if problem is None:
            return beside
        warnings.warn(f"{beside}: {problem}; using an index built from the tar instead "
                      f"(`python -m dali_resizer.shards index {tar_path}` rewrites it)", stacklevel=3)
    stat = os.stat(tar_path)
    digest = hashlib.sha1(f"{os.path.abspath(tar_path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    index_dir = Path(index_dir) if index_dir is not None else default_index_dir()
    index_dir.mkdir(parents=True, exist_ok=True)
    cached = index_dir / f"{Path(tar_path).stem}-{digest}.idx"
    if not cached.is_file():
        try:
            build_index(tar_path, cached)
        except (tarfile.TarError, OSError) as e:
            raise ValueError(f"{tar_path}: cannot be indexed, the tar is damaged or cut short ({e})") from None
    return str(cached)


def _read_index_count(index_path: str) -> int:
    with open(index_path) as f:
        header = f.readline().split()
    if len(header) != 2 or not header[0].startswith("v1.") or not header[1].isdigit():
        raise ValueError(f"{index_path}: not a DALI WebDataset index (first line {' '.join(header)!r})")
    return int(header[1])


def _expand_shard_pattern(pattern: str) -> list[str]:
    import braceexpand  # installed with webdataset

    return list(braceexpand.braceexpand(pattern))


def open_source(
    source: str | os.PathLike | list[str | os.PathLike] | tuple[str | os.PathLike, ...],
    index_dir: str | os.PathLike | None = None,
) -> ImageFolderSource | ShardSource:
    """Resolves what the user passed: an image folder, a folder of ``.tar`` shards, one ``.tar``, a list
    of tars, or a brace pattern such as ``train-{000000..000127}.tar``."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("source is an empty list of shards")
        return ShardSource.from_paths([os.fspath(p) for p in source], index_dir)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path, a list of shard paths or a brace pattern, got {type(source).__name__}")
    path = os.fspath(source)
    if "{" in path and ".." in path:
        return ShardSource.from_paths(_expand_shard_pattern(path), index_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"source not found: {path}")
    if os.path.isfile(path):
        if path.endswith(".tar"):
            return ShardSource.from_paths([path], index_dir)
        with open(path, "rb") as f:
            if f.read(len(FILE_LIST_HEADER)) == FILE_LIST_HEADER.encode():
                return ImageFolderSource.from_list(path)
        raise ValueError(f"{path}: a file source must be a WebDataset .tar shard or a dali_resizer file list")
    tars = sorted(str(p) for p in Path(path).glob("*.tar"))
    if tars:
        return ShardSource.from_paths(tars, index_dir)
    return ImageFolderSource.scan(path)
