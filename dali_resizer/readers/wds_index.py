"""DALI's WebDataset index files (format v1.2): build one from a tar, check one is current, read members
by offset, and write stand-in copies in which bad samples read another sample's image."""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dali_resizer.samples import SHARD_IMAGE_EXTENSIONS
from dali_resizer.storage import absolute, storage_for

__all__ = [
    "CUT_SUFFIX",
    "DUPLICATES_SUFFIX",
    "SPACED_SUFFIX",
    "TarSample",
    "build_index",
    "index_mismatch",
    "index_problem",
    "read_index_count",
    "read_index_rows",
    "read_tar_member",
    "sample_key",
    "sample_problem",
    "standin_index",
    "sub_index",
    "tar_samples",
    "write_atomic",
]

DUPLICATES_SUFFIX = ".duplicates"  # beside an index: the members build_index left out as duplicate keys
CUT_SUFFIX = ".cut"  # beside an index: the members of a tar cut short that build_index left out
SPACED_SUFFIX = ".spaced"  # beside an index: the members whose names hold whitespace, which an index cannot


def sample_key(member: str) -> str:
    """A tar member's WebDataset sample key: its path up to the first dot of its file name."""
    dot = member.find(".", member.rfind("/") + 1)
    return member if dot < 0 else member[:dot]


@dataclass(frozen=True)
class TarSample:
    """One sample of a tar: its key and its members by extension (as written in the names)."""

    key: str
    members: dict[str, tarfile.TarInfo]

    @property
    def has_image(self) -> bool:
        return any(ext.lower() in SHARD_IMAGE_EXTENSIONS for ext in self.members)

    def member(self, ext: str) -> tarfile.TarInfo | None:
        """The member of extension ``ext`` (any case), or None."""
        return next((m for e, m in self.members.items() if e.lower() == ext), None)


def tar_samples(tar_path: str | os.PathLike) -> tuple[list[TarSample], list[tarfile.TarInfo], list[str]]:
    """The one grouping of a tar's members into samples, as webdataset and DALI group them: regular,
    not hidden files named ``<key>.<ext>`` (the key ends at the first dot of the file name), in the order
    of their first member. A member whose key and extension (any case) came before is a duplicate, left
    out. Returns ``(samples, duplicates, cut)``; ``cut``: the members of a tar cut short that are lost
    (see :func:`read_members`). The index builder, ``shards verify`` and ``check`` read tars with it."""
    members, cut = read_members(os.fspath(tar_path))
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    seen: set[tuple[str, str]] = set()
    duplicates: list[tarfile.TarInfo] = []
    for member in members:
        base = os.path.basename(member.name)
        if not member.isfile() or base.startswith(".") or "." not in base:
            continue
        ext, key = base.split(".", 1)[1], sample_key(member.name)
        if (key, ext.lower()) in seen:
            duplicates.append(member)
            continue
        seen.add((key, ext.lower()))
        samples.setdefault(key, {})[ext] = member
    return [TarSample(key, parts) for key, parts in samples.items()], duplicates, cut


def sample_problem(has_image: bool, label: bytes | str | None, num_classes: int | None,
                   classes_from: str = "classes.txt") -> tuple[str, str] | None:
    """The one rule of a good shard sample: ``(kind, reason)`` of its first problem, else None. It has an
    image and a ``.cls`` label, which is one run of ASCII digits (blanks around it allowed) that fits
    int64 and, when the classes are known (read from ``classes_from``), names one of the ``num_classes``.
    The reader (for the reason of a row its batch-wide parse refused), ``shards verify`` and ``check``
    apply it."""
    if not has_image:
        return "sample without image", "no image (.jpg/.jpeg/.png/.webp) in the sample"
    if label is None:
        return "sample without label", "no label (.cls) in the sample"
    text = (label.decode("utf-8", "surrogateescape") if isinstance(label, bytes) else label).strip(" \t\r\n\0")
    if not (text.isascii() and text.isdigit()):
        return "non-integer label", f"label {text!r} is not a non-negative integer (ASCII digits)"
    if len(text.lstrip("0")) > 18:
        return "label out of range", f"label {text} is out of range: more digits than an int64 holds"
    if num_classes is not None and int(text) >= num_classes:
        return "label out of range", (f"label {int(text)} is out of range for the {num_classes} classes of "
                                      f"{classes_from}")
    return None


def build_index(tar_path: str | os.PathLike, index_path: str | os.PathLike) -> int:
    """Writes DALI's WebDataset index (format v1.2) for ``tar_path``; returns the sample count.

    The samples are :func:`tar_samples`'s. A member whose key and extension were already seen (a
    duplicate key) is left out of the index, not merged, and listed in ``<index_path>.duplicates`` for
    the loader and the checks to report. A tar cut short is indexed up to its last whole member; the
    members it cuts are listed in ``<index_path>.cut``. A member whose name holds whitespace (which the
    index's format cannot hold) is left out and listed in ``<index_path>.spaced``, ``repr``-quoted.
    """
    tar_path = os.fspath(tar_path)
    samples, duplicates, cut = tar_samples(tar_path)
    rows, spaced = [], []
    for sample in samples:
        kept = {ext: m for ext, m in sample.members.items() if not any(c.isspace() for c in m.name)}
        spaced += [m.name for m in sample.members.values() if any(c.isspace() for c in m.name)]
        if kept:
            rows.append(" ".join(f"{ext} {m.offset_data} {m.size} {m.name}" for ext, m in kept.items()))
    write_atomic(f"{os.fspath(index_path)}{DUPLICATES_SUFFIX}",
                 "".join(f"{m.name}\n" for m in duplicates) or None)
    write_atomic(f"{os.fspath(index_path)}{SPACED_SUFFIX}", "".join(f"{name!r}\n" for name in spaced) or None)
    write_atomic(f"{os.fspath(index_path)}{CUT_SUFFIX}", "".join(f"{name}\n" for name in cut) or None)
    write_atomic(index_path, f"v1.2 {len(rows)}\n" + "".join(row + "\n" for row in rows))
    return len(rows)


def read_members(tar_path: str) -> tuple[list[tarfile.TarInfo], list[str]]:
    """The whole members of a tar, and the names of those it cuts short: a member whose data runs past
    the end, or ``@<offset>`` where what follows the last whole member is neither a member nor the
    zero blocks that end a tar (the tar ends there, or a header is cut short or damaged: whatever
    came after is lost)."""
    storage = storage_for(tar_path)
    size = storage.stat(tar_path).size
    members: list[tarfile.TarInfo] = []
    cut: list[str] = []
    with storage.open(tar_path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        try:
            while (member := tar.next()) is not None:
                members.append(member)
        except tarfile.ReadError:  # the tar ends inside a header, or inside the data before it
            pass
    while members and members[-1].offset_data + members[-1].size > size:
        cut.insert(0, members.pop().name)
    end = members[-1].offset_data + -(-members[-1].size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE if members else 0
    # a whole tar ends with zero blocks after its last member
    tail = storage.read(tar_path, end, max(0, min(size - end, 2 * tarfile.BLOCKSIZE))) if end < size else b""
    if not cut and (len(tail) < tarfile.BLOCKSIZE or any(tail)):
        cut.append(f"@{min(end, size)}")
    return members, cut


def write_atomic(path: str | os.PathLike, text: str | None) -> None:
    """Writes ``text`` to ``path`` through a rename (a concurrent reader sees the old file or the whole
    new one); ``None`` removes ``path``."""
    if text is None:
        Path(path).unlink(missing_ok=True)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_index_rows(index_path: str) -> list[list[str]]:
    """An index's samples, a row each: ``[ext, offset, size, member, ext, ...]`` (its header left out)."""
    return [line.split() for line in storage_for(index_path).read(index_path).decode().splitlines()[1:]]


def read_index_count(index_path: str) -> int:
    """The sample count in an index's header line."""
    header = storage_for(index_path).read(index_path, 0, 64).decode("ascii", "replace").split("\n", 1)[0].split()
    if len(header) != 2 or not header[0].startswith("v1.") or not header[1].isdigit():
        raise ValueError(f"{index_path}: not a DALI WebDataset index (first line {' '.join(header)!r})")
    return int(header[1])


def read_tar_member(tar_path: str, offset: int) -> tuple[str, bytes]:
    """The name and bytes of the member whose data starts at ``offset`` (as DALI's index and source
    names give it), read through its tar header."""
    storage = storage_for(tar_path)
    start = offset - tarfile.BLOCKSIZE
    header = storage.read(tar_path, start, tarfile.BLOCKSIZE) if start >= 0 else b""
    try:
        info = tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError as e:
        raise ValueError(f"{tar_path}: no tar member starts at byte {offset}, where its index says one does ({e}): the "
                         f"index does not match the tar; `python -m dali_resizer.shards index {tar_path}` rewrites "
                         f"it") from None
    return info.name, storage.read(tar_path, offset, info.size)


def standin_index(index_path: str, tar_path: str, keys: set[str], out_dir: str | os.PathLike) -> tuple[str, str]:
    """A copy of a DALI index in which the samples ``keys`` read the image of another sample of the same
    tar, under their own names; returns ``(index, tar)`` to read (written once into ``out_dir``).

    The loader reads it instead of the original once those samples are known to be bad: the reader
    still counts them (so positions, checkpoints and batch counts do not move), nothing fails on them,
    and their rows are recognised by name and marked as padding. Where no good image is left in the
    index, every sample reads the one image of a small stand-in tar written beside it (``tar`` is then
    that tar).
    """
    storage = storage_for(index_path)
    digest = hashlib.sha1("\n".join([absolute(index_path), *sorted(keys)]).encode()).hexdigest()[:16]
    out = Path(out_dir) / f"{Path(index_path).stem}-standin-{digest}.idx"
    lines = storage.read(index_path).decode().splitlines()
    rows = [line.split() for line in lines[1:]]

    def image(row):
        return next((i for i in range(0, len(row), 4) if row[i].lower() in SHARD_IMAGE_EXTENSIONS), None)

    donor = next((row for row in rows if sample_key(row[3]) not in keys and image(row) is not None), None)
    tar = tar_path if donor is not None else str(out.with_suffix(".tar"))
    if out.is_file() and out.stat().st_mtime_ns >= storage.stat(index_path).mtime_ns and (
            tar == tar_path or Path(tar).is_file()):
        return str(out), tar
    out.parent.mkdir(parents=True, exist_ok=True)
    if donor is None:  # (the samples left are all bad: each reads the stand-in tar's image)
        (jpg, jpg_size), (cls, cls_size) = _write_standin_tar(tar)
        rows = [["jpg", str(jpg), str(jpg_size), f"{sample_key(row[3])}.jpg", "cls", str(cls), str(cls_size),
                 f"{sample_key(row[3])}.cls"] for row in rows]
    else:
        i = image(donor)
        for row in rows:
            key = sample_key(row[3])
            if key in keys:
                j = image(row)
                if j is None:  # a sample without an image gets one (the donor's), named after it
                    row += [donor[i], donor[i + 1], donor[i + 2], f"{key}.{donor[i]}"]
                else:
                    row[j + 1 : j + 3] = donor[i + 1 : i + 3]
    write_atomic(out, lines[0] + "\n" + "".join(" ".join(row) + "\n" for row in rows))
    return str(out), tar


def _write_standin_tar(path: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """A tar of one small grey JPEG and a label, for samples no good image of their tar can stand in
    for; returns the (offset, size) of each."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (124, 116, 104)).save(buffer, format="JPEG")
    tmp = f"{path}.tmp{os.getpid()}"
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("standin.jpg", buffer.getvalue()), ("standin.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)
    with tarfile.open(path) as tar:
        return tuple((m.offset_data, m.size) for m in tar.getmembers())


def sub_index(index_path: str, rows: range | Sequence[int], out_dir: str | os.PathLike) -> str:
    """A DALI index of the samples ``rows`` (positions in ``index_path``'s order, ascending), written
    once into ``out_dir``; returns its path. A rank that reads part of a tar reads it through one."""
    storage = storage_for(index_path)
    stat = storage.stat(index_path)
    if isinstance(rows, range) and rows.step == 1:
        part = f"{rows.start}-{rows.stop}"
    else:
        rows = [int(r) for r in rows]
        part = f"{len(rows)}of-" + hashlib.sha1(",".join(map(str, rows)).encode()).hexdigest()[:12]
    digest = hashlib.sha1(f"{absolute(index_path)}:{stat.version}:{part}".encode()).hexdigest()[:16]
    out = Path(out_dir) / f"{Path(index_path).stem}-{part}-{digest}.idx"
    if out.is_file():
        return str(out)
    lines = storage.read(index_path).decode().splitlines()
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{lines[1 + r]}\n" for r in rows)
    write_atomic(out, f"{lines[0].split()[0]} {len(rows)}\n{text}")
    return str(out)


def index_problem(tar_path: str | os.PathLike, index_path: str | os.PathLike) -> str | None:
    """A cheap check that an index still describes its tar: ``None`` when it looks current, else why not.

    Reads only the index's first and last lines, so it costs little at thousands of shards; the full
    comparison is ``python -m dali_resizer.shards verify``.
    """
    tar_path, index_path = os.fspath(tar_path), os.fspath(index_path)
    storage = storage_for(index_path)
    tar_stat, index_stat = storage_for(tar_path).stat(tar_path), storage.stat(index_path)
    if index_stat.mtime_ns < tar_stat.mtime_ns:
        return "the index is older than its tar"
    header = storage.read(index_path, 0, 64).split(b"\n", 1)[0].split()
    tail = storage.read(index_path, max(0, index_stat.size - 65536)).splitlines()
    if len(header) != 2 or not header[0].startswith(b"v1.") or not header[1].isdigit():
        return "not a DALI WebDataset index"
    if int(header[1]) == 0:
        return None
    last = tail[-1].split() if tail else []
    try:
        ends = [int(last[i + 1]) + int(last[i + 2]) for i in range(0, len(last), 4)]
    except (ValueError, IndexError):
        return "its last line is not a sample"
    if not ends or max(ends) > tar_stat.size:
        return f"it points past the end of the tar ({max(ends, default=0)} > {tar_stat.size} bytes)"
    return None


def index_mismatch(tar_path: str, index_path: str) -> str | None:
    """Every row of a local tar's index against the tar's headers: ``None`` when each member the index
    names starts where it says, with its size, each row holds one sample's members, and every sample
    member of the tar is in the index (but the duplicates, and names with whitespace, that
    :func:`build_index` leaves out); else the first difference. Reads one header a member with a plain
    parse (tarfile reads only long-name records and the gaps between indexed members), several times
    faster than rebuilding the index."""
    rows = read_index_rows(index_path)
    parts, indexed = [], set()
    for line, row in enumerate(rows, start=2):
        if len(row) % 4 or not row:
            return f"line {line} is not a sample"
        keys = sorted({sample_key(row[i + 3]) for i in range(0, len(row), 4)})
        if len(keys) != 1:
            return f"line {line} holds members of {len(keys)} samples ({', '.join(keys)})"
        for i in range(0, len(row), 4):
            try:
                parts.append((int(row[i + 1]), int(row[i + 2]), row[i + 3], line))
            except ValueError:
                return f"line {line} is not a sample"
            indexed.add((keys[0], row[i + 3][row[i + 3].find(".", row[i + 3].rfind("/") + 1) + 1:].lower()))
    parts.sort()
    with open(tar_path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        fd, position = f.fileno(), 0

        def members_until(stop: int | None):  # the tar's members from `position` on, read by tarfile
            at = position
            while stop is None or at < stop:
                f.seek(at)
                try:
                    member = tarfile.TarInfo.fromtarfile(tar)  # (long-name records included; sets tar.offset)
                except (tarfile.HeaderError, tarfile.ReadError):  # the zero blocks that end a tar, or a cut
                    return
                yield member
                at = tar.offset

        def lost(member: tarfile.TarInfo) -> str | None:  # a sample member the index leaves out
            base = os.path.basename(member.name)
            if not member.isfile() or base.startswith(".") or "." not in base or any(c.isspace() for c in member.name):
                return None
            ext = base.split(".", 1)[1].lower()
            return None if (sample_key(member.name), ext) in indexed else member.name

        for offset, size, name, line in parts:
            header = os.pread(fd, tarfile.BLOCKSIZE, offset - tarfile.BLOCKSIZE) if offset >= tarfile.BLOCKSIZE else b""
            found = _header_name_size(header)
            if found != (name, size) or offset - tarfile.BLOCKSIZE != position:
                # a gap, or a header that needs tarfile (long names): read the members up to this one
                found = None
                for member in members_until(offset):
                    if member.offset_data == offset:
                        found = (member.name, member.size)
                        break
                    if lost(member) is not None:
                        return f"the tar's member {member.name} is not in the index"
                if found != (name, size):
                    there = f"{found[0]} ({found[1]} bytes)" if found else "no member"
                    return f"line {line}: {name} ({size} bytes) at byte {offset}, where the tar holds {there}"
            position = offset + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        for member in members_until(None):
            if lost(member) is not None:
                return f"the tar's member {member.name} is not in the index"
    return None


def _header_name_size(header: bytes) -> tuple[str, int] | None:
    """(name, size) of a plain ustar/GNU header of a regular file (no long-name record before it), else
    None (tarfile reads the others)."""
    if len(header) < tarfile.BLOCKSIZE or header[156:157] not in (b"0", b"\0"):
        return None
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar" and header[345]:
        name = header[345:500].split(b"\0", 1)[0] + b"/" + name
    try:
        return name.decode("ascii"), int(header[124:136].strip(b" \0") or b"0", 8)
    except (UnicodeDecodeError, ValueError):
        return None
