"""Where a source's bytes live, apart from what kind of source it is.

The readers (``dali_resizer.readers``) list, stat and read through a :class:`Storage`, never through
``os`` directly, so a source kind does not care whether its files are on a local disk or in an object
store. DALI itself reads the data through the paths or URLs it is given. :func:`storage_for` picks
the storage of a path: :class:`LocalStorage`, or :class:`S3Storage` for ``s3://bucket/key`` (S3 or
an S3-compatible store, through boto3 with the standard AWS configuration, which DALI's S3 reading
uses too: ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ``AWS_REGION``, the credentials).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["LocalStorage", "S3Storage", "Stat", "Storage", "absolute", "read_each", "storage_for"]


@dataclass(frozen=True)
class Stat:
    """What decides whether a cached index is still current: size, a version (mtime, ETag) and the
    modification time in ns."""

    size: int
    version: str
    mtime_ns: int = 0


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

    def put(self, local_file: str | os.PathLike, path: str) -> None:
        """Publishes a local file under ``path`` at once: a reader sees the old object or the whole new
        one, never a part."""
        raise NotImplementedError

    def delete(self, path: str) -> None:
        raise NotImplementedError

    def download(self, path: str, out: BinaryIO, version: str | None = None) -> None:
        """Writes ``path``'s bytes into ``out``; ``version``: the :class:`Stat` version the bytes must be
        (an object changed since is a ``ConnectionError``, to be read again)."""
        with self.open(path) as f:
            shutil.copyfileobj(f, out, 8 << 20)

    def local_copy(self, path: str, folder: str | os.PathLike) -> str:
        """A local file holding ``path``'s bytes, written into ``folder`` where it is not local already:
        the offline tools read a tar through it, whole, instead of a request a member."""
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
        return Stat(st.st_size, str(st.st_mtime_ns), st.st_mtime_ns)

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

    def put(self, local_file: str | os.PathLike, path: str) -> None:
        import shutil

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        shutil.copyfile(local_file, tmp)
        os.replace(tmp, path)  # (a rename: atomic)

    def delete(self, path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def local_copy(self, path: str, folder: str | os.PathLike) -> str:
        return path


class S3Storage(Storage):
    """Objects under ``s3://bucket/key``: folders are key prefixes ending in ``/``.

    Listing and ranged reads go through boto3 (``pip install "dali_resizer[s3]"``), configured as
    the AWS CLI and DALI are: ``AWS_ENDPOINT_URL`` for an S3-compatible store (MinIO, Ceph RGW, R2),
    ``AWS_PROFILE``, ``AWS_REGION``, the credentials. Files are listed in the order
    :class:`LocalStorage` lists a folder (by folder, then by name), so an image folder under a prefix
    has the same samples, labels and order as its local copy.
    """

    def __init__(self) -> None:
        self._client = None

    @property
    def client(self):
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as e:
                raise ImportError('s3:// sources need boto3: pip install "dali_resizer[s3]"') from e
            config = Config(retries={"max_attempts": int(os.environ.get("DALI_RESIZER_S3_RETRIES", "3")),
                                     "mode": "standard"},
                            connect_timeout=float(os.environ.get("DALI_RESIZER_S3_TIMEOUT", "10")),
                            read_timeout=float(os.environ.get("DALI_RESIZER_S3_TIMEOUT", "10")))
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    @staticmethod
    def split(url: str) -> tuple[str, str]:
        bucket, _, key = url[len("s3://"):].partition("/")
        return bucket, key

    def _call(self, url: str, operation: str, **kwargs):
        """A boto3 call, its failures as the OS errors they mean, naming the URL (and the endpoint)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(**kwargs)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound") or status == 404:
                raise FileNotFoundError(f"{url}: not found ({code or status})") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
                raise PermissionError(f"{url}: access denied ({code or status}): check the credentials "
                                      f"(AWS_ACCESS_KEY_ID, AWS_PROFILE)") from None
            raise OSError(f"{url}: {operation} failed: {e}") from None
        except BotoCoreError as e:
            endpoint = self.client.meta.endpoint_url
            raise ConnectionError(f"{url}: cannot reach {endpoint} ({e}); AWS_ENDPOINT_URL sets the endpoint, "
                                  f"DALI_RESIZER_S3_TIMEOUT and DALI_RESIZER_S3_RETRIES the patience") from None

    def _head(self, url: str):
        bucket, key = self.split(url)
        if not key or key.endswith("/"):
            return None
        try:
            return self._call(url, "head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None

    def _keys(self, url: str, delimiter: str | None = None, limit: int | None = None):
        """(keys, common prefixes) under the folder ``url``."""
        bucket, key = self.split(url)
        prefix = key.rstrip("/") + "/" if key else ""
        keys, prefixes, token = [], [], None
        while True:
            kwargs = {"Bucket": bucket, "Prefix": prefix}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if limit:
                kwargs["MaxKeys"] = limit
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(url, "list_objects_v2", **kwargs)
            keys += [item["Key"] for item in page.get("Contents", [])]
            prefixes += [item["Prefix"] for item in page.get("CommonPrefixes", [])]
            token = page.get("NextContinuationToken")
            if not token or limit:
                return bucket, keys, prefixes

    def exists(self, path: str) -> bool:
        return self.is_file(path) or self.is_dir(path)

    def is_file(self, path: str) -> bool:
        return self._head(path) is not None

    def is_dir(self, path: str) -> bool:
        _, keys, prefixes = self._keys(path, "/", limit=1)
        return bool(keys or prefixes)

    def stat(self, path: str) -> Stat:
        head = self._head(path)
        if head is None:
            raise FileNotFoundError(f"{path}: not found")
        mtime_ns = int(head["LastModified"].timestamp() * 1e9)
        return Stat(int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'), mtime_ns)

    def subdirs(self, path: str) -> list[str]:
        _, _, prefixes = self._keys(path, "/")
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in prefixes)

    def files_here(self, path: str) -> list[str]:
        bucket, keys, _ = self._keys(path, "/")
        return sorted(f"s3://{bucket}/{k}" for k in keys if not k.endswith("/"))

    def files(self, path: str, loops: list[str] | None = None) -> Iterator[str]:
        bucket, keys, _ = self._keys(path)
        for key in sorted((k for k in keys if not k.endswith("/")), key=lambda k: (k.rsplit("/", 1)[0], k)):
            yield f"s3://{bucket}/{key}"

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        if size == 0:
            return b""
        bucket, key = self.split(path)
        span = f"bytes={offset}-" + ("" if size is None else str(offset + size - 1))
        try:
            body = self._call(path, "get_object", Bucket=bucket, Key=key, Range=span)["Body"]
        except OSError as e:
            if "InvalidRange" in str(e):  # (a range that starts at or past the end)
                return b""
            raise
        return body.read()

    def open(self, path: str) -> BinaryIO:
        return io.BufferedReader(_RangedObject(self, path, self.stat(path).size), buffer_size=8 << 20)

    def join(self, *parts: str) -> str:
        return "/".join([parts[0].rstrip("/"), *(p.strip("/") for p in parts[1:])])

    def parent(self, path: str) -> str:
        return path.rstrip("/").rsplit("/", 1)[0]

    def put(self, local_file: str | os.PathLike, path: str) -> None:
        # an object appears only once its upload (multipart too) completes: atomic for readers
        bucket, key = self.split(path)
        try:
            self.client.upload_file(os.fspath(local_file), bucket, key)
        except Exception as e:  # boto3's transfer errors wrap the client's
            raise OSError(f"{path}: upload failed: {e}") from None

    def delete(self, path: str) -> None:
        bucket, key = self.split(path)
        self._call(path, "delete_object", Bucket=bucket, Key=key)

    def download(self, path: str, out: BinaryIO, version: str | None = None) -> None:
        from botocore.exceptions import BotoCoreError

        bucket, key = self.split(path)
        extra = {"IfMatch": f'"{version}"'} if version else {}
        try:
            body = self._call(path, "get_object", Bucket=bucket, Key=key, **extra)["Body"]
        except OSError as e:
            if "PreconditionFailed" in str(e) or "412" in str(e):
                raise ConnectionError(f"{path}: changed while it was being read (its ETag is not {version})") from None
            raise
        try:
            for chunk in body.iter_chunks(8 << 20):
                out.write(chunk)
        except BotoCoreError as e:  # (the connection dropped mid-object)
            raise ConnectionError(f"{path}: the download stopped ({e})") from None

    def local_copy(self, path: str, folder: str | os.PathLike) -> str:
        bucket, key = self.split(path)
        local = os.path.join(os.fspath(folder), key.rsplit("/", 1)[-1])
        self.stat(path)  # (a missing object: FileNotFoundError naming it)
        try:
            self.client.download_file(bucket, key, local)
        except Exception as e:  # boto3's transfer errors wrap the client's
            raise OSError(f"{path}: download failed: {e}") from None
        return local


class _RangedObject(io.RawIOBase):
    """A seekable, read-only view of an object, read by ranged GETs (``io.BufferedReader`` on top
    reads ahead in large blocks)."""

    def __init__(self, storage: S3Storage, url: str, size: int) -> None:
        self._storage, self._url, self._size, self._pos = storage, url, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence] + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._pos))
        if count == 0:
            return 0
        data = self._storage.read(self._url, self._pos, count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


_LOCAL = LocalStorage()
_S3 = S3Storage()


def storage_for(location: str | os.PathLike) -> Storage:
    """The storage of a path or URL: ``s3://`` URLs, else local paths."""
    text = os.fspath(location)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme == "s3":
        return _S3
    if scheme:
        raise ValueError(f"{text}: {scheme}:// sources are not supported; give a local path or an s3:// URL")
    return _LOCAL


def read_each(paths, problems: dict[str, str]) -> Iterator[tuple[str, bytes]]:
    """``(path, bytes)`` of each path in order; one that cannot be read goes into ``problems`` as
    ``"unreadable: why"`` instead, never silently."""
    for path in paths:
        try:
            data = storage_for(path).read(path)
        except OSError as e:
            problems[path] = f"unreadable: {e.strerror or e}"
            continue
        yield path, data


def absolute(path: str) -> str:
    """A path made absolute (URLs as they are): what caches key on."""
    return path if "://" in path else os.path.abspath(path)
