"""WebDataset tar shards (``<key>.{jpg,jpeg,png,webp}`` + ``<key>.cls``), each read with a DALI index."""

from __future__ import annotations

import functools
import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dali_resizer.readers.base import Reader, Restart
from dali_resizer.readers.wds_index import (
    CUT_SUFFIX,
    DUPLICATES_SUFFIX,
    SPACED_SUFFIX,
    build_index,
    index_mismatch,
    index_problem,
    read_index_count,
    read_index_rows,
    read_tar_member,
    sample_key,
    sample_problem,
    standin_index,
    sub_index,
    write_atomic,
)
from dali_resizer.sampler import Epoch
from dali_resizer.samples import (
    PAD_LABEL,
    SHARD_IMAGE_EXTENSIONS,
    SHARD_LABEL_EXTENSION,
    STATUS_OK,
    BadSampleError,
    problem_of,
    warn_user,
)
from dali_resizer.storage import absolute, storage_for

__all__ = ["CLASSES_FILE", "MANIFEST_FILE", "MANIFEST_FORMAT", "SOURCES_SUFFIX", "ShardReader", "ShardSource",
           "default_cache_dir", "default_index_dir", "parse_ascii_labels", "parse_classes"]

CLASSES_FILE = "classes.txt"
MAX_SPAN_TARS = 32  # through the shard cache: the most tars' worth of samples one pipeline reads
SPANS_AHEAD = 2  # through the shard cache: the spans whose tars are downloaded while one is read
# Written by `shards make` beside the shards: each tar's sample count and size, and the classes. A loader
# over many shards reads this one object at start-up instead of every index header.
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "dali_resizer shards v1"
# Beside each tar `shards make` writes: {"root": the image folder, "files": {key: its file under root}}
SOURCES_SUFFIX = ".sources.json"


def parse_classes(text: str, where: str) -> list[str]:
    """The class names of a ``classes.txt``: one a line (``\\n``, or ``\\r\\n``), a last line break
    allowed; a blank name is an error naming the line. (Only ``\\n`` ends a line: a name may hold any
    other character, U+2028 included.)"""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    names = [line.removesuffix("\r") for line in lines]
    blank = next((n for n, name in enumerate(names, start=1) if not name.strip()), None)
    if blank is not None:
        raise ValueError(f"{where}:{blank}: a blank class name; {CLASSES_FILE} holds one class name a line")
    return names


def default_cache_dir() -> Path:
    """``$DALI_RESIZER_CACHE``, else ``$XDG_CACHE_HOME/dali_resizer``, else ``~/.cache/dali_resizer``."""
    if "DALI_RESIZER_CACHE" in os.environ:
        return Path(os.environ["DALI_RESIZER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dali_resizer"


def default_index_dir() -> Path:
    """Where the loader builds the WebDataset indexes that are missing beside their tars."""
    return default_cache_dir() / "wds-index"


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
    # tar -> members of a tar cut short that its index leaves out (``@<offset>``: where it stops)
    cut: dict[str, list[str]] = field(default_factory=dict)
    index_dir: Path = field(default_factory=default_index_dir, repr=False)
    # each tar's size in bytes as the manifest lists it (None: counts read from the indexes)
    manifest_bytes: list[int] | None = field(default=None, repr=False)
    classes_from: str = CLASSES_FILE  # where the class names were read (the manifest holds them too)
    # tar -> members its index leaves out because their names hold whitespace (repr-quoted)
    spaced: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(self.counts)

    def __getitem__(self, index: int) -> tuple[str, str]:
        """``(tar, key)`` of the sample ``index`` (the tars in the order given, each in its index's order)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        index %= len(self)
        i = int(np.searchsorted(np.cumsum(self.counts), index, side="right"))
        return self.paths[i], _index_keys(self.index_paths[i])[index - sum(self.counts[:i])]

    @property
    def class_to_idx(self) -> dict[str, int] | None:
        return None if self.classes is None else {name: i for i, name in enumerate(self.classes)}

    def reader(self, plan, ledger) -> ShardReader:
        return ShardReader(self, plan, ledger)

    @classmethod
    def from_paths(cls, paths: list[str], index_dir: str | os.PathLike | None = None,
                   whole_folder: bool = False) -> ShardSource:
        """Uses ``<shard>.idx`` beside each tar, or builds a missing index once into ``index_dir``.

        Tars listed in a ``manifest.json`` beside them (``shards make`` writes it) take their sample
        counts and classes from it, and their indexes from beside them, unread: one object is read at
        start-up, not one per tar (``shards verify`` checks a manifest against its tars). ``whole_folder``:
        ``paths`` are all the tars of their folder (a tar its manifest lists is missing otherwise)."""
        storage = storage_for(paths[0])
        if len(set(paths)) != len(paths):
            _refuse_twice(paths, lambda path: path)
        index_dir = Path(index_dir) if index_dir is not None else default_index_dir()
        manifest = _manifest_for(paths, whole_folder)
        if manifest is not None:  # (names of one folder, each a tar of its own: no path to resolve)
            counts, sizes, classes = manifest
            return cls(list(paths), [p[: -len(".tar")] + ".idx" if p.endswith(".tar") else os.path.splitext(p)[0]
                                     + ".idx" for p in paths], counts, classes, index_dir=index_dir,
                       manifest_bytes=sizes, classes_from=MANIFEST_FILE)
        classes_file = storage.join(storage.parent(paths[0]), CLASSES_FILE)
        classes = parse_classes(storage.read(classes_file).decode(), classes_file) if storage.is_file(
            classes_file) else None
        folders: dict[str, str] = {}  # (each folder resolved once: a path costs one lstat, not one per part)
        _refuse_twice(paths, lambda path: path if "://" in path else _resolved(path, folders))
        missing = [p for p in paths if not storage.is_file(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise FileNotFoundError(f"shard not found: {missing[0]}{more}")
        index_paths = [_index_for(p, index_dir) for p in paths]
        counts = [read_index_count(p) for p in index_paths]
        empty = [p for p, count in zip(paths, counts) if count == 0]
        if empty:  # (nothing of them is lost; DALI is never handed a tar without a sample)
            more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
            if len(empty) == len(paths):
                raise ValueError(f"{empty[0]}{more}: no samples in any tar of the source")
            warn_user(f"{empty[0]}{more}: no samples (an empty file or an empty tar): left out of the source")
            keep = [k for k, count in enumerate(counts) if count]
            paths, index_paths, counts = ([values[k] for k in keep] for values in (paths, index_paths, counts))
        duplicates, cut, spaced = {}, {}, {}
        for tar, index in zip(paths, index_paths):
            for suffix, found in ((DUPLICATES_SUFFIX, duplicates), (CUT_SUFFIX, cut), (SPACED_SUFFIX, spaced)):
                listed = storage_for(index + suffix)
                if listed.is_file(index + suffix):
                    found[tar] = listed.read(index + suffix).decode().split("\n")[:-1]
        return cls(list(paths), index_paths, counts, classes, duplicates, cut, index_dir, spaced=spaced)


def _local_index(cache, index: str) -> str:
    """The index DALI reads through the cache: the local copy of one in object storage (one built into
    the index cache is local already)."""
    return cache.local(index) if "://" in index else index


@functools.lru_cache(maxsize=8)
def _index_keys(index_path: str) -> list[str]:
    """The sample keys of an index, in its order."""
    return [sample_key(row[3]) for row in read_index_rows(index_path)]


def _refuse_twice(paths: list[str], real) -> None:
    """A tar listed twice (``real(path)``: what identifies it) is an error naming both."""
    seen: dict[str, str] = {}
    for path in paths:
        key = real(path)
        if key in seen:
            also = f" (also as {seen[key]})" if seen[key] != path else ""
            raise ValueError(f"{path}: listed twice in the source{also}; a tar is read once per epoch")
        seen[key] = path


def _resolved(path: str, folders: dict[str, str]) -> str:
    """``os.path.realpath(path)``, resolving each folder once (``folders``: its cache)."""
    if os.path.islink(path):
        return os.path.realpath(path)
    folder, name = os.path.split(os.path.abspath(path))
    if folder not in folders:
        folders[folder] = os.path.realpath(folder)
    return os.path.join(folders[folder], name)


def _manifest_for(paths: list[str], whole_folder: bool = False) -> tuple[list[int], list[int], list[str] | None] | None:
    """(counts, sizes, classes) of ``paths`` from the manifest beside them, when they all are in one
    folder and it lists them all; else None. ``whole_folder``: ``paths`` are the folder's tars, so a tar
    the manifest lists and the folder lacks is missing: an error naming it."""
    import json

    folder = paths[0].rpartition("/")[0]
    if any(p.rpartition("/")[0] != folder for p in paths):
        return None
    storage = storage_for(paths[0])
    where = storage.join(folder or ".", MANIFEST_FILE)
    try:
        manifest = json.loads(storage.read(where))
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    if "unfinished" in manifest:  # (written first by `shards make`, replaced by its last step)
        raise ValueError(f"{where}: {manifest['unfinished']} and did not finish (interrupted?): the shards beside it "
                         f"are a partial set; run it again with --overwrite")
    by_name = {entry["tar"]: (entry["samples"], entry["bytes"]) for entry in manifest.get("shards", [])}
    names = {p.rpartition("/")[2] for p in paths}
    gone = sorted(set(by_name) - names) if whole_folder else []
    if gone:
        more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
        raise FileNotFoundError(f"{storage.join(folder or '.', gone[0])}{more}: listed in {where} but not in the "
                                f"folder; put it back, or rewrite the shards with `python -m dali_resizer.shards make`")
    unlisted = sorted(names - set(by_name)) if whole_folder else []
    if unlisted:  # (another set written into the same folder, or a tar added by hand: not read as this set)
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        raise ValueError(f"{storage.join(folder or '.', unlisted[0])}{more}: in the folder but not in {where}, "
                         f"which describes the set; keep each set of shards in a folder of its own, or pass the "
                         f"tars themselves")
    try:
        found = [by_name[p.rpartition("/")[2]] for p in paths]
    except KeyError:  # (a tar it does not list)
        return None
    return [int(n) for n, _ in found], [int(b) for _, b in found], manifest.get("classes")


def _index_for(tar_path: str, index_dir: Path) -> str:
    """The index beside the tar when it is current, else one built once into ``index_dir``."""
    storage = storage_for(tar_path)
    beside = os.path.splitext(tar_path)[0] + ".idx"
    if storage.is_file(beside):
        problem = index_problem(tar_path, beside)
        if problem is None:
            return beside
        warn_user(f"{beside}: {problem}; using an index built from the tar instead "
                  f"(`python -m dali_resizer.shards index {tar_path}` rewrites it)")
    stat = storage.stat(tar_path)
    digest = hashlib.sha1(f"{absolute(tar_path)}:{stat.size}:{stat.version}".encode()).hexdigest()[:16]
    index_dir.mkdir(parents=True, exist_ok=True)
    cached = index_dir / f"{Path(tar_path).stem}-{digest}.idx"
    if not cached.is_file():
        if stat.size == 0:  # (not a tar at all, but nothing in it is lost: an index of no samples)
            write_atomic(cached, "v1.2 0\n")
            return str(cached)
        try:
            build_index(tar_path, cached)
        except (tarfile.TarError, OSError) as e:
            raise ValueError(f"{tar_path}: cannot be indexed, the tar is damaged or cut short ({e})") from None
    return str(cached)


def parse_ascii_labels(raw: torch.Tensor) -> torch.Tensor:
    """``(N, L)`` uint8 rows of ASCII digits (WebDataset ``.cls``), zero/whitespace padded, to int64 ``(N,)``;
    a row that is not a non-negative integer is an error."""
    value, valid = _ascii_labels(raw)
    if not bool(valid.all()):
        row = raw[(~valid).nonzero()[0, 0]]
        raise ValueError(f"WebDataset label (.cls) is not a non-negative integer: {bytes(row[row != 0].tolist())!r}")
    return value


def _ascii_labels(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, valid) of ``(N, L)`` rows of ASCII text, each row on its own: valid where it is one run
    of digits with blanks (zero, space, tab, line breaks) around it, and fits int64 (18 significant
    digits); an invalid row's value is meaningless. The batch's width (its longest label) decides
    nothing for the other rows."""
    is_digit = (raw >= ord("0")) & (raw <= ord("9"))
    is_blank = (raw == 0) | (raw == ord(" ")) | (raw == ord("\n")) | (raw == ord("\r")) | (raw == ord("\t"))
    width = raw.shape[1]
    column = torch.arange(width).expand_as(raw)
    first = torch.where(is_digit, column, width).amin(dim=1, keepdim=True) if width else column[:, :1]
    last = torch.where(is_digit, column, -1).amax(dim=1, keepdim=True) if width else column[:, :1]
    inside = (column >= first) & (column <= last)
    valid = is_digit.any(dim=1) & torch.where(inside, is_digit, is_blank).all(dim=1)
    leading = torch.where(is_digit & (raw != ord("0")), column, width).amin(dim=1, keepdim=True) if width else first
    valid &= (last - torch.minimum(leading, last) + 1).view(-1) <= 18  # (int64 holds any 18 digits)
    digits = (raw.to(torch.int64) - ord("0")).clamp_(0, 9)
    value = torch.zeros(raw.shape[0], dtype=torch.int64)
    for c in range(width):
        value = torch.where(is_digit[:, c] & valid, value * 10 + digits[:, c], value)
    return value, valid


def _row_texts(raw: torch.Tensor) -> list[str]:
    """Zero-padded uint8 rows (DALI's source names, labels) to strings."""
    return [row.tobytes().replace(b"\0", b"").decode("utf-8", "surrogateescape") for row in raw.cpu().numpy()]


def _split_source_name(name: str) -> tuple[str, int, str]:
    """DALI's source name of a shard sample's component, ``"<tar>:<offset>:<member>"``."""
    tar, offset, member = name.rsplit(":", 2)
    return tar, int(offset), member


class ShardReader(Reader):
    """Reads a :class:`ShardSource` with ``pipelines.webdataset_pipeline``.

    The tars' order is one permutation of ``(seed, epoch)`` for every shard; each shard reads its own
    run of that order (:meth:`epoch_pieces`) in a pipeline of its own, which shuffles within its
    buffer. A bad sample is found by its name (DALI's
    source info: tar, offset, member); once skipped, its tar is read through a stand-in index in
    which it reads another sample's image under its own name, and its row is marked as padding.
    """

    output_names = ("images", "targets", "status", "image_name", "label_name")

    def __init__(self, source: ShardSource, plan, ledger) -> None:
        super().__init__(source, plan, ledger)
        self.bad_keys: dict[str, set[str]] = {}  # tar -> keys of its skipped samples (read as stand-ins)
        self._nameless_found: dict[str, str] | None = None
        self._keys: dict[int, dict[str, int]] = {}  # tar -> its samples' keys -> position (tars read so far)
        self._tar_number: dict[str, int] = {}  # tar -> its number in the source (the tars this shard has read)
        self._first: list[int] | None = None
        self._checked: set[int] = set()  # tars checked at their first read (_check_tar)
        self._pending: dict[str, tuple[str, str]] = {}  # reported bad samples -> (tar, key), until skipped
        self._sources: dict[str, tuple[str, dict[str, str]] | None] = {}  # tar -> its samples' source files
        self._whole_index: dict[int, str] = {}  # tar -> the index read for it (a local copy through the cache)
        self._read_as: dict[str, str] = {}  # the file DALI reads -> the source's tar (a local copy, a stand-in tar)
        self._bounds_of: tuple = (None, [])  # (the epoch, its spans' bounds in batches), through the cache
        self._saved_spans: dict | None = None  # the spans of a loaded state's epoch
        self._known: dict[str, str] = {
            f"{tar} (member {member})": "duplicate key: an earlier member of the tar has the same key and extension; "
            "this copy is left out of the index" for tar, members in source.duplicates.items() for member in members}
        self._known |= {f"{tar} (member {member})": "its name holds whitespace, which a DALI index cannot hold: left "
                        "out of the index (rename it and rewrite the tar)"
                        for tar, members in source.spaced.items() for member in members}
        for tar, members in source.cut.items():
            for member in members:
                if member.startswith("@"):
                    warn_user(f"{tar}: cut short or damaged at byte {member[1:]}: whatever came after is lost; "
                              f"the samples before it are read")
                else:
                    key = sample_key(member)
                    self._known[f"{tar} (sample {key})"] = f"the tar ends inside its member {member} (cut short)"
                    self.bad_keys.setdefault(tar, set()).add(key)

    def known_bad(self) -> dict[str, str]:
        return dict(self._known)

    def skip(self, names) -> None:
        for name in names:
            if name in self._pending:
                tar, key = self._pending.pop(name)
                self.bad_keys.setdefault(tar, set()).add(key)

    def nothing_left(self) -> str | None:
        if sum(len(keys) for keys in self.bad_keys.values()) < len(self.source):
            return None
        return (f"{self.source.paths[0]} ...: every sample of the source is bad ({len(self.source)} skipped: "
                f"loader.skipped names them); nothing is left to read")

    def describe(self) -> str:
        return f"{len(self.source.paths)} shards"

    def state_dict(self) -> dict:
        state = {"bad_keys": {tar: sorted(keys) for tar, keys in self.bad_keys.items()}}
        if self._bounds_of[0] is not None:  # (the spans of the epoch read last: a resume cuts it alike)
            number, rank, replicas, _ = self._bounds_of[0]
            state["spans"] = {"epoch": number, "rank": rank, "replicas": replicas, "bounds": self._bounds_of[1]}
        return state

    def load_state_dict(self, state: dict) -> None:
        for tar, keys in state.get("bad_keys", {}).items():
            self.bad_keys.setdefault(tar, set()).update(keys)
        spans = state.get("spans")
        if isinstance(spans, dict) and isinstance(spans.get("bounds"), list):
            self._saved_spans = spans

    def pipeline(self, epoch: Epoch, checkpoint: bytes | None = None, base: int = 0, replay: bool = False,
                 on_cpu: bool = False):
        import pipelines

        source, cache = self.source, self.plan.cache
        if self.nothing_left() is not None:
            raise BadSampleError(self.nothing_left())
        pieces = self.epoch_pieces(epoch)
        if cache is not None:  # this span of the epoch, its tars local (the next AHEAD spans' on their way)
            end, b = self.span_end(epoch, base), self.plan.batch_size
            ahead = end
            for _ in range(SPANS_AHEAD):
                ahead = self.span_end(epoch, ahead)
            after = self._cut(pieces, end * b, ahead * b)
            pieces = self._cut(pieces, base * b, end * b)
            wanted = [path for i, _, _ in pieces + after for path in (source.index_paths[i], source.paths[i])
                      if "://" in path]
            cache.unpin(keep=wanted)  # (the spans before this one are read: their copies may go)
            cache.prefetch(wanted)
        paths, index_paths = [], []
        for i, start, stop in pieces:
            tar = source.paths[i]
            index = source.index_paths[i]
            read, index = (tar, index) if cache is None else (cache.local(tar), _local_index(cache, index))
            self._check_tar(i, read, index)  # (DALI reads these files)
            self._whole_index[i] = index
            rows = self.piece_rows(epoch, i, start, stop)
            if len(rows) != source.counts[i]:  # part of a tar: through an index of that part
                index = sub_index(index, rows, source.index_dir / "parts")
            if self.bad_keys.get(tar):
                index, standin = standin_index(index, tar, self.bad_keys[tar], source.index_dir / "standin")
                read = read if standin == tar else standin  # (a stand-in tar, where none of its images is good)
            paths.append(read)
            index_paths.append(index)
            self._read_as[read] = tar
            self._tar_number[tar] = i
        # this shard's tars only: its pipeline parses only their indexes (DALI's own split would read all)
        pipe = pipelines.webdataset_pipeline(
            paths, index_paths, shard_id=0, num_shards=1, random_shuffle=epoch.shuffle,
            **self.plan.pipeline_settings(epoch, on_cpu), checkpoint=checkpoint, replay=replay)
        pipe.build()
        return pipe

    def span_end(self, epoch: Epoch, base: int) -> int | None:
        """Through the cache, an epoch is read in spans, each a pipeline of its own whose tars are local
        when it is built: the first span is the first tar's worth of batches (reading starts once one tar
        has arrived), each next one twice the last, up to ``MAX_SPAN_TARS`` tars' worth (a pipeline's
        build, and its first batch, which nothing was prefetched for, are amortised over thousands of
        samples); the next ``SPANS_AHEAD`` spans' tars download meanwhile. Without the cache, one pipeline
        reads the epoch."""
        if self.plan.cache is None:
            return None
        bounds = self._span_bounds(epoch)
        return next((bound for bound in bounds if bound > base), bounds[-1])

    def _span_bounds(self, epoch: Epoch) -> list[int]:
        key = (epoch.number, epoch.rank, epoch.num_replicas, epoch.carried is not None and epoch.carried.runs.tobytes())
        if self._bounds_of[0] != key:
            self._bounds_of = (key, self._layout(epoch))
        return self._bounds_of[1]

    def _layout(self, epoch: Epoch) -> list[int]:
        """The spans' bounds of ``epoch``: growing spans, as wide as the cache's limit lets three of them be.
        The same for every run with the same limit and tars, whatever the cache holds (so the batches of
        ``(seed, epoch)`` are too); saved in the state, so that a resume cuts the epoch alike under
        another limit."""
        saved = self._saved_spans
        if saved is not None and epoch.carried is None and (saved["epoch"], saved["rank"], saved["replicas"]) == (
                epoch.number, epoch.rank, epoch.num_replicas):
            return [int(b) for b in saved["bounds"]]
        pieces, b, cache = self.epoch_pieces(epoch), self.plan.batch_size, self.plan.cache
        ends = np.cumsum([stop - start for _, start, stop in pieces]).tolist()
        total = ends[-1] if ends else 0
        last = total // b if epoch.drop_last else -(-total // b)
        tars = [self.source.paths[i] for i, _, _ in pieces]
        # a span and the next SPANS_AHEAD are pinned in the cache at once: together they fit its limit
        largest = max((cache.size(tar) for tar in tars), default=1)
        pinned = SPANS_AHEAD + 1
        widest = max(1, min(MAX_SPAN_TARS, cache.limit // (pinned * largest) if cache.limit else MAX_SPAN_TARS))
        bounds, k, width = [], 0, 1
        while k < len(ends):
            k = min(k + width, len(ends))
            bounds.append(min(-(-ends[k - 1] // b), last))
            width = min(2 * width, widest)
        return sorted({bound for bound in bounds if bound > 0} | {last})

    @staticmethod
    def _cut(pieces: list[tuple[int, int, int]], low: int, high: int) -> list[tuple[int, int, int]]:
        """The part of ``pieces`` (a run of samples) from its sample ``low`` to ``high``."""
        out, at = [], 0
        for i, start, stop in pieces:
            lo, hi = max(start, start + low - at), min(stop, start + high - at)
            if lo < hi:
                out.append((i, lo, hi))
            at += stop - start
        return out

    def missing(self, epoch: Epoch, done: int) -> list[str]:
        paths = [self.source.paths[i] for i, _, _ in self.epoch_pieces(epoch)]
        return [p for p in paths if not storage_for(p).is_file(p)]

    def _check_tar(self, i: int, read: str, read_index: str) -> None:
        """Tar ``i`` is checked when this shard first reads it (a rank pays for its own tars only): one taken
        from the manifest against its size, count, and that its index is current; an index beside a local
        tar (not one the loader built from it) row by row against the tar's headers, so that no row reads
        another sample's member or is left out (``index_mismatch``: one header read a member). ``read`` and
        ``read_index``: the files DALI reads (the local copies of a tar and index in object storage)."""
        source = self.source
        if i in self._checked:
            return
        tar, index = source.paths[i], source.index_paths[i]
        problem = None
        cache = self.plan.cache
        if source.manifest_bytes is not None:
            size = storage_for(tar).stat(tar).size if cache is None else cache.size(tar)  # (the cache asked once)
            problem = (f"{source.manifest_bytes[i]} bytes in the manifest, {size} in the tar"
                       if size != source.manifest_bytes[i] else
                       # (through the cache, index_mismatch below checks the local copies row by row)
                       index_problem(tar, index) if cache is None else None)
            if problem is None and read_index_count(read_index) != source.counts[i]:
                problem = f"{source.counts[i]} samples in the manifest, {read_index_count(read_index)} in its index"
            if problem is not None:
                raise ValueError(f"{tar}: changed since {MANIFEST_FILE} was written ({problem}); rewrite the shards "
                                 f"with `python -m dali_resizer.shards make`, or remove {MANIFEST_FILE} to read the "
                                 f"indexes")
        if "://" not in read and not Path(index).is_relative_to(source.index_dir):
            problem = index_mismatch(read, read_index)
            if problem is not None:
                raise ValueError(f"{index}: does not match its tar {tar} ({problem}); `python -m dali_resizer.shards "
                                 f"index {tar}` rewrites it")
        self._checked.add(i)

    def epoch_pieces(self, epoch: Epoch) -> list[tuple[int, int, int]]:
        """This rank's part of ``epoch``: ``(tar, start, stop)``, a run of the tar's samples left to
        read (all of them, but for an epoch taken over mid-way: see :meth:`piece_rows`).

        The tars are permuted by ``(seed, epoch)`` (the same on every rank) and their samples, in
        that order, cut into ``num_replicas`` contiguous runs whose lengths differ by one at most: this
        rank's run is whole tars and at most two parts of tars. Only the counts are needed (from the
        manifest, or the index headers), not the indexes."""
        source = self.source
        order = epoch.order(len(source.paths))
        counts = np.asarray(source.counts, dtype=np.int64)
        if epoch.carried is not None:  # what is left of each tar
            first = np.concatenate([[0], np.cumsum(counts)])
            counts = counts - (epoch.carried.below(first[1:]) - epoch.carried.below(first[:-1]))
        ends = np.cumsum(counts[order])
        low, high = epoch.bounds(int(ends[-1]) if ends.size else 0)
        lo, hi = np.searchsorted(ends, low, side="right"), np.searchsorted(ends, high, side="left")
        pieces = []
        for k in range(lo, min(hi + 1, len(order))):
            begin = int(ends[k] - counts[order[k]])
            start, stop = max(low, begin), min(high, int(ends[k]))
            if start < stop:
                pieces.append((int(order[k]), start - begin, stop - begin))
        return pieces

    def piece_rows(self, epoch: Epoch, i: int, start: int, stop: int) -> range | np.ndarray:
        """The samples (positions in tar ``i``'s index) of the piece ``(i, start, stop)``: ``start`` and
        ``stop`` count the samples of the tar left to read in ``epoch``."""
        if epoch.carried is None:
            return range(start, stop)
        left = epoch.carried.left_in(self._first_ids()[i], self.source.counts[i])
        return range(start, stop) if len(left) == self.source.counts[i] else left[start:stop]

    def _first_ids(self) -> list[int]:
        """Each tar's first sample id: the tars in the order given, each in its index's order."""
        if self._first is None:
            self._first = np.concatenate([[0], np.cumsum(self.source.counts)]).tolist()
        return self._first

    def labels(self, out):
        status = out["status"].view(-1)
        labels, parsed = _ascii_labels(out["targets"])
        classes = len(self.source.classes) if self.source.classes is not None else None
        valid = parsed & (labels < classes) if classes is not None else parsed
        image_names, label_names = _row_texts(out["image_name"]), _row_texts(out["label_name"])
        ids = np.full(len(image_names), -1, dtype=np.int64)
        for row, (image_name, label_name) in enumerate(zip(image_names, label_names)):
            if image_name or label_name:
                tar, _, member = self._split(image_name or label_name)
                ids[row] = self._sample_id(tar, sample_key(member))
        if bool(valid.all()) and not bool(status.any()) and not self.bad_keys:
            # (a sample with neither an image nor a label has no name: see _nameless)
            return labels, torch.from_numpy(ids) if self.plan.sample_indices else None, ids[ids >= 0], {}
        padding = torch.zeros_like(valid)
        texts = [row.tobytes().rstrip(b"\0").decode("utf-8", "surrogateescape")  # (inner zeros kept: see the rule)
                 for row in out["targets"].cpu().numpy()]
        bad = {}
        for row, (image_name, label_name) in enumerate(zip(image_names, label_names)):
            has_image, has_label = bool(image_name), bool(label_name)
            if not has_image and not has_label:  # DALI cannot say which sample: the indexes can
                bad.update(self._nameless())
                padding[row] = True
                continue
            tar, offset, member = self._split(image_name or label_name)
            key = sample_key(member)
            if key in self.bad_keys.get(tar, ()):
                padding[row] = True  # a stand-in for a sample skipped before
                continue
            if int(status[row]) != STATUS_OK and has_image:
                problem = problem_of(read_tar_member(tar, offset)[1], status=int(status[row]),
                                     max_pixels=self.plan.spec.max_pixels)
            elif not bool(valid[row]) or not has_image or not has_label:
                found = sample_problem(has_image, texts[row] if has_label else None, classes, self.source.classes_from)
                if found is None:  # (the batch-wide parse and the rule disagree: a bug, said as one)
                    raise RuntimeError(f"{tar} (sample {key}): label {texts[row]!r} refused by the batch's parse "
                                       f"but not by the sample rule")
                problem = found[1]
            else:
                continue
            bad[f"{tar} (sample {key})"] = problem + self._made_from(tar, key)
            self._pending[f"{tar} (sample {key})"] = (tar, key)
            padding[row] = True
        labels[padding] = PAD_LABEL
        if not self.plan.sample_indices:
            return labels, None, ids[ids >= 0], bad
        indices = torch.from_numpy(ids.copy())
        indices[padding] = -1
        return labels, indices, ids[ids >= 0], bad

    def _made_from(self, tar: str, key: str) -> str:
        """``" (made from <file>)"``: the image file a sample was made from, as ``shards make`` recorded it
        beside the tar (read once a tar, when one of its samples is bad); else ``""``."""
        if tar not in self._sources:
            import json

            where = tar[: -len(".tar")] + SOURCES_SUFFIX if tar.endswith(".tar") else None
            storage = storage_for(tar)
            try:
                record = json.loads(storage.read(where)) if where and storage.is_file(where) else {}
                self._sources[tar] = (record["root"], record["files"]) if record else None
            except (OSError, ValueError, KeyError, TypeError):
                self._sources[tar] = None  # (a record that is not one names nothing)
        if self._sources[tar] is None or key not in self._sources[tar][1]:
            return ""
        root, files = self._sources[tar]
        return f" (made from {storage_for(root).join(root, files[key])})"

    def _split(self, name: str) -> tuple[str, int, str]:
        """(tar, offset, member) of DALI's source name, the tar named as the source names it (not its local
        copy, nor a stand-in tar)."""
        tar, offset, member = _split_source_name(name)
        return self._read_as.get(tar, tar), offset, member

    def _sample_id(self, tar: str, key: str) -> int:
        """A sample's id (its index in the source: the tars in the order given, each in its index's
        order), from its tar and key; -1 for a key the index does not hold."""
        i = self._tar_number[tar]
        if i not in self._keys:  # (the tar's index, read once: a shard reads only its own tars')
            self._keys[i] = {sample_key(row[3]): n for n, row in enumerate(read_index_rows(self._whole_index[i]))}
        position = self._keys[i].get(key)
        return -1 if position is None else self._first_ids()[i] + position

    def _nameless(self) -> dict[str, str]:
        """The samples with neither an image nor a label component, found in the tars' indexes (DALI
        gives such a sample no name), recorded as bad keys; ``{}`` once they are known."""
        if self._nameless_found is not None:
            return {}
        found = {}
        for tar, index in zip(self.source.paths, self.source.index_paths):
            rows = read_index_rows(index)
            for row in rows:
                exts = [row[i].lower() for i in range(0, len(row), 4)]
                if not any(e in SHARD_IMAGE_EXTENSIONS or e == SHARD_LABEL_EXTENSION for e in exts):
                    key = sample_key(row[3])
                    members = ", ".join(row[i + 3] for i in range(0, len(row), 4))
                    found[f"{tar} (sample {key})"] = (
                        f"neither an image (.jpg/.jpeg/.png/.webp) nor a label (.cls) in the sample: its members are "
                        f"{members} (a component's extension is all after the first dot of the file name, as in "
                        f"webdataset)")
                    self._pending[f"{tar} (sample {key})"] = (tar, key)
        if not found:
            raise BadSampleError(f"a sample of {self.source.paths[0]} ... came with neither an image nor a label, "
                                 f"and no index lists one (run `python -m dali_resizer.shards verify`)")
        self._nameless_found = found
        return found

    def recover(self, failure, error, epoch, done, checkpoint, base=0):
        if failure.sample:
            candidates = [failure.sample]
        elif checkpoint is not None:
            remaining = (self.span_end(epoch, base) or epoch.batches(self.plan.batch_size)) - done
            candidates = self._replay(epoch, checkpoint, base, min(self.plan.prefetch_queue_depth + 2, remaining))
        else:
            candidates = []
        members = {}  # source name -> (the tar header's member name, bytes)
        for name in dict.fromkeys(candidates):
            tar, offset, _ = _split_source_name(name)
            members[name] = read_tar_member(tar, offset)
        if failure.sample:
            problems = {name: self.named(data, failure) for name, (_, data) in members.items()}
        else:
            problems = self.probe((name, data) for name, (_, data) in members.items())
        bad, keys = {}, []
        for name, problem in problems.items():
            tar, _, member = self._split(name)
            key = sample_key(member)
            if key in self.bad_keys.get(tar, ()):  # a stand-in's image: the donor sample is bad
                key = sample_key(members[name][0])
            bad[f"{tar} (sample {key})"] = problem + self._made_from(tar, key)
            keys.append((tar, key))
        repeated = [name for name, (tar, key) in zip(bad, keys) if key in self.bad_keys.get(tar, ())]
        bad = self.report(bad, repeated, failure, self.source.paths[0], error)
        self._pending.update(zip(bad, keys))
        return Restart(bad, checkpoint=checkpoint)

    def _replay(self, epoch: Epoch, checkpoint: bytes, base: int, count: int) -> list[str]:
        """The names of the samples in the next ``count`` batches after ``checkpoint``, read again by a
        pipeline that decodes nothing: on the CPU, where DALI restores the checkpoint there (no GPU
        memory for it), else on the loader's device."""
        try:
            pipe = self.pipeline(epoch, checkpoint, base, replay=True, on_cpu=True)
        except RuntimeError:  # (a GPU graph's checkpoint may name operators its CPU twin lacks)
            pipe = self.pipeline(epoch, checkpoint, base, replay=True)
        names = []
        for _ in range(max(count, 1)):
            image_names = pipe.run()[self.output_names.index("image_name")]
            names += [text for text in _row_texts(torch.from_numpy(np.array(image_names.as_tensor()))) if text]
        return names
