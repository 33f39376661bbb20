"""Where a source's bytes live, apart from what kind of source it is.

The readers (``dali_resizer.readers``) list, stat and read through a :class:`Storage`, never through
``os`` directly, so a source kind does not care whether its files are on a local disk or elsewhere.
DALI itself reads the data through the paths or URLs it is given. Local paths are the one storage
here; :func:`storage_for` names what is not supported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["LocalStorage", "Stat", "Storage", "storage_for"]


@dataclass(frozen=True)
class Stat:
    """What decides whether a cached index is still current: size and a version (mtime, ETag)."""

    size: int
    version: str


class Storage:
    """The operations a reader needs of a location. Paths are strings as DALI takes them."""

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def is_file(self, path: str) -> bool:
        raise NotImplementedError

    def is_dir(self, path: str) -> bool:
        raise NotImplementedError

    def stat(self, path: str) -> Stat:
        raise NotImplementedError

    def subdirs(self, path: str) -> list[str]:
        """Names of the folders directly under ``path``, sorted."""
        raise NotImplementedError

    def files_here(self, path: str) -> list[str]:
        """The files directly in ``path`` (not below it), as full paths, sorted."""
        raise NotImplementedError

    def files(self, path: str, loops: list[str] | None = None) -> Iterator[str]:
        """Every file below ``path`` (recursively), as full paths, in a sorted, repeatable order.
        ``loops``: where given, each symbolic link to a folder above it (or to its own folder) is
        appended as ``"<link> -> <target>"``, once."""
        raise NotImplementedError

    def open(self, path: str) -> BinaryIO:
        raise NotImplementedError

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        """``size`` bytes of ``path`` from ``offset`` (to the end when ``None``)."""
        with self.open(path) as f:
            f.seek(offset)
            return f.read() if size is None else f.read(size)

    def join(self, *parts: str) -> str:
        raise NotImplementedError

    def parent(self, path: str) -> str:
        raise NotImplementedError


class LocalStorage(Storage):
    """A local (or mounted) file system."""

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def stat(self, path: str) -> Stat:
        st = os.stat(path)
        return Stat(st.st_size, str(st.st_mtime_ns))

    def subdirs(self, path: str) -> list[str]:
        return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())

    def files_here(self, path: str) -> list[str]:
        return sorted(entry.path for entry in os.scandir(path) if entry.is_file())

    def files(self, path: str, loops: list[str] | None = None) -> Iterator[str]:
        # followlinks: torchvision's ImageFolder follows symbolic links to folders, and so do we, loops
        # included (a loop is walked until the path is too long, as ImageFolder walks it)
        seen: set[tuple[str, str]] = set()
        for dirpath, dirnames, names in sorted(os.walk(path, followlinks=True)):
            if loops is not None:
                here = os.path.realpath(dirpath)
                for d in dirnames:
                    link = os.path.join(dirpath, d)
                    if os.path.islink(link) and (here, d) not in seen:
                        target = os.path.realpath(link)
                        if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
                            seen.add((here, d))
                            loops.append(f"{link} -> {target}")
            for name in sorted(names):
                yield os.path.join(dirpath, name)

    def open(self, path: str) -> BinaryIO:
        return open(path, "rb")

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def parent(self, path: str) -> str:
        return os.path.dirname(path)


_LOCAL = LocalStorage()


def storage_for(location: str | os.PathLike) -> Storage:
    """The storage of a path or URL: local paths (and ``file://`` URLs are not special-cased)."""
    text = os.fspath(location)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme:
        raise ValueError(f"{text}: {scheme}:// sources are not supported; give a local path")
    return _LOCAL
