"""A node-local cache of whole tars read from object storage, shared by the node's processes.

DALI's S3 reading makes one ranged request per read (about four a sample), which a distant store's
latency makes unusable. Each rank knows its epoch's tars in order, so the shard reader asks this cache
for them a few ahead: each is downloaded whole (one request), in the background, into a folder on the
node's disk, and DALI reads the local copy. As MosaicML Streaming and litdata do it:

- **Shared.** The ranks of a node use one folder (``$DALI_RESIZER_CACHE/shards``). A tar two ranks need
  is downloaded once: the first takes ``<copy>.dl`` (``flock``), downloads into ``<copy>.part.<pid>.<n>``
  and renames it; the other waits on the lock and finds the copy.
- **Trusted only whole.** A copy's name holds its object's ETag, so a changed object is another copy;
  it is downloaded with ``If-Match`` on that ETag, its size checked, and only then renamed into place.
  A partial download never has a copy's name; what a killed process left (``.part`` files) is removed.
- **Bounded.** Copies beyond ``limit`` bytes are evicted, least recently used first; a copy a process
  has pinned (the tars of the pipeline it reads or builds next: a shared ``flock`` on ``<copy>.lock``)
  never is.
  Evicting a copy that DALI has open is safe anyway: the open file lives on until it is closed.
- **Faults.** A download that fails is retried (``retries``), then raised as a ``ConnectionError``
  naming the object; a full disk is an ``OSError`` naming the folder, with nothing half-written left.
  A cache folder removed mid-run is made again and refilled.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dali_resizer.storage import Stat, storage_for

__all__ = ["ShardCache", "default_cache_limit", "parse_bytes"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "TIB": 2**40}


def parse_bytes(value: int | str) -> int:
    """A byte count: an int, or a string such as ``"100GB"``, ``"1.5 TiB"``, ``"2000000"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a byte count must not be negative, got {value}")
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"{value!r} is not a byte count (e.g. 100GB, 1.5TiB, 2000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def default_cache_limit(folder: str | os.PathLike, largest: int) -> int:
    """``DALI_RESIZER_CACHE_LIMIT`` if set, else 80% of what the cache folder's disk holds free plus what
    the cache holds already; an error where that cannot hold three of the largest tars (the one read and
    the two downloaded ahead)."""
    if os.environ.get("DALI_RESIZER_CACHE_LIMIT"):
        return parse_bytes(os.environ["DALI_RESIZER_CACHE_LIMIT"])
    os.makedirs(folder, exist_ok=True)
    held = sum(p.stat().st_size for p in Path(folder).glob("*.tar"))
    limit = int(0.8 * (shutil.disk_usage(folder).free + held))
    if limit < 3 * largest:
        raise OSError(errno.ENOSPC, f"{folder}: {limit / 1e9:.2f} GB free for the shard cache, less than three of the "
                      f"largest tars ({largest / 1e9:.2f} GB each); free space, point DALI_RESIZER_CACHE elsewhere, "
                      f"or pass cache=False to read the tars in place")
    return limit


class ShardCache:
    """Local copies of the tars (and their indexes) of object storage; see the module's docstring.

    ``folder``: shared by the node's processes. ``limit``: bytes of copies kept (None: the default of
    :func:`default_cache_limit`). ``workers``: parallel downloads of this process. ``retries``: tries of
    a download before it is an error.
    """

    def __init__(self, folder: str | os.PathLike, limit: int | None = None, workers: int = 4,
                 retries: int = 3) -> None:
        self.folder = Path(folder)
        self.limit = limit
        self.retries = retries
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dali-resizer-cache")
        self._lock = threading.Lock()
        self._futures: dict[str, Future] = {}  # url -> its download's future (this process)
        self._stats: dict[str, Stat] = {}
        self._pins: dict[str, int] = {}  # copy -> the fd holding its shared lock (this process)
        self._parts = 0
        self.downloads = 0  # objects this process downloaded (the others it found in the cache)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_dead_parts()

    def __repr__(self) -> str:
        return f"ShardCache({str(self.folder)!r}, limit={self.limit})"

    # -- what the reader asks -------------------------------------------------------------------------

    def prefetch(self, urls) -> None:
        """Starts downloading ``urls`` (in this order) unless they are cached or on their way."""
        for url in urls:
            self._future(url)

    def local(self, url: str) -> str:
        """The local copy of ``url``, pinned (see :meth:`unpin`): waits for its download, starting one if
        none is on its way; a copy that vanished (the folder removed) is downloaded again."""
        for _ in range(2):
            path = self._future(url).result()
            if self._pin(path):
                os.utime(path)  # (recently used: evicted last)
                return path
            with self._lock:  # gone since: the folder was removed or the copy evicted by another process
                self._futures.pop(url, None)
        raise FileNotFoundError(f"{url}: its copy in {self.folder} vanished twice while it was being pinned")

    def unpin(self, keep=()) -> None:
        """Lets every copy this process pinned be evicted again, but those of the URLs ``keep``."""
        kept = {str(self.copy_path(url, self._stats[url])) for url in keep if url in self._stats}
        with self._lock:
            for path in [p for p in self._pins if p not in kept]:
                os.close(self._pins.pop(path))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.unpin()

    # -- downloads ------------------------------------------------------------------------------------

    def _future(self, url: str) -> Future:
        with self._lock:
            future = self._futures.get(url)
            if future is None or (future.done() and future.exception() is not None):
                future = self._futures[url] = self._pool.submit(self._fetch, url)
            return future

    def size(self, url: str) -> int:
        """The object's size in bytes (one request, once)."""
        return self._stat(url).size

    def _stat(self, url: str) -> Stat:
        if url not in self._stats:
            self._stats[url] = storage_for(url).stat(url)
        return self._stats[url]

    def copy_path(self, url: str, stat: Stat) -> Path:
        """Where the copy of ``url`` at version ``stat`` lives (its name holds the URL's digest, the
        ETag's and the file name, its characters but letters, digits, ``.``, ``_`` and ``-`` replaced)."""
        key = hashlib.sha1(url.encode()).hexdigest()[:16]
        version = hashlib.sha1(stat.version.encode()).hexdigest()[:12]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rsplit("/", 1)[-1])  # (the digest keeps names apart)
        return self.folder / f"{key}-{version}-{name}"

    def _fetch(self, url: str) -> str:
        stat = self._stat(url)
        final = self.copy_path(url, stat)
        if self._pin(str(final)) and final.stat().st_size == stat.size:
            return str(final)
        self.folder.mkdir(parents=True, exist_ok=True)  # (the folder may have been removed)
        with open(f"{final}.dl", "a") as lock:  # (its own lock: a pin's shared lock never blocks it)
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download of a copy per node; the others wait here
            try:
                if self._pin(str(final)) and final.stat().st_size == stat.size:
                    return str(final)
                self._download(url, stat, final)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        with self._lock:
            self.downloads += 1
        self._pin(str(final))  # (next in line for this process: not evicted before it is read)
        self._evict()
        return str(final)

    def _download(self, url: str, stat: Stat, final: Path) -> None:
        """Downloads ``url`` whole into a part file, checks it, renames it to ``final``; retries."""
        with self._lock:
            self._parts += 1
            part = Path(f"{final}.part.{os.getpid()}.{self._parts}")
        storage = storage_for(url)
        error: BaseException | None = None
        for attempt in range(self.retries):
            if attempt:
                time.sleep(min(0.2 * 2**attempt, 5.0))
            try:
                try:
                    with open(part, "wb") as out:
                        storage.download(url, out, version=stat.version)
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                        raise OSError(e.errno, f"{self.folder}: no room for {url} ({stat.size:,} bytes: "
                                      f"{os.strerror(e.errno)}); free space, lower the cache limit "
                                      f"(cache_limit=, DALI_RESIZER_CACHE_LIMIT) or point DALI_RESIZER_CACHE "
                                      f"elsewhere") from None
                    raise
                size = part.stat().st_size
                if size != stat.size:
                    raise ConnectionError(f"{url}: {size:,} bytes downloaded, the object has {stat.size:,}")
                os.replace(part, final)
                return
            except (ConnectionError, TimeoutError) as e:
                error = e
            except FileNotFoundError:
                raise
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                error = e
            finally:
                part.unlink(missing_ok=True)
        raise ConnectionError(f"{url}: download failed after {self.retries} tries ({error}); loader.state_dict() "
                              f"resumes where the epoch stopped") from None

    # -- pins and eviction ----------------------------------------------------------------------------

    def _pin(self, path: str) -> bool:
        """Holds a shared lock on the copy's lock file (an evicting process skips it); False when the
        copy is gone."""
        with self._lock:
            if path in self._pins:
                return os.path.isfile(path)
            try:
                fd = os.open(f"{path}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
            except FileNotFoundError:  # (the folder was removed)
                return False
            fcntl.flock(fd, fcntl.LOCK_SH)
            if not os.path.isfile(path):
                os.close(fd)
                return False
            self._pins[path] = fd
            return True

    def _evict(self) -> None:
        """Removes the least recently used copies until the cache holds at most ``limit`` bytes; a copy
        pinned by any process (its lock held) is kept."""
        if self.limit is None:
            return
        copies = []
        for path in self.folder.glob("*"):
            if path.suffix in (".lock", ".dl") or ".part." in path.name:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            copies.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in copies)
        for _, size, path in sorted(copies):
            if total <= self.limit:
                return
            if str(path) in self._pins:
                continue
            with open(f"{path}.lock", "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # pinned by another process
                    continue
                try:
                    path.unlink(missing_ok=True)
                    total -= size
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _remove_dead_parts(self) -> None:
        """Removes the part files of processes that are gone (a crash mid-download)."""
        for part in self.folder.glob("*.part.*"):
            try:
                pid = int(part.name.rsplit(".part.", 1)[1].split(".")[0])
                os.kill(pid, 0)
            except ProcessLookupError:
                part.unlink(missing_ok=True)
            except (ValueError, PermissionError):
                continue
