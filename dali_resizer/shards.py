"""WebDataset shards with DALI index files: write them from an image folder, check them, index them.

    python -m dali_resizer.shards make imagenet/train shards/train --samples-per-shard 1000 --prefix train
    python -m dali_resizer.shards verify shards/train
    python -m dali_resizer.shards index shards/train/*.tar      # (re)write the .idx beside each tar
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from dali_resizer.progress import ProgressBar
from dali_resizer.readers import ImageFolderSource
from dali_resizer.readers.wds_index import (
    CUT_SUFFIX,
    DUPLICATES_SUFFIX,
    SPACED_SUFFIX,
    build_index,
    index_problem,
    read_index_count,
    sample_problem,
    tar_samples,
)
from dali_resizer.readers.webdataset import (
    CLASSES_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    SOURCES_SUFFIX,
    parse_classes,
)
from dali_resizer.samples import SHARD_IMAGE_EXTENSIONS, SHARD_LABEL_EXTENSION, problem_of
from dali_resizer.storage import storage_for

__all__ = ["NO_INDEX", "main", "report_problems", "verify_shards", "write_shards"]

# the folder `shards make` writes in (hidden: never listed as data), removed when it ends
WORK_PREFIX = ".shards-make-"
# a note, not a failure: the loader reads such a tar through an index it builds once into its cache
NO_INDEX = "no .idx beside the tar (note: the loader builds one into its cache; `shards index` writes it)"


def write_shards(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    samples_per_shard: int = 1000,
    prefix: str = "shard",
    shuffle: bool = True,
    seed: int = 0,
    overwrite: bool = False,
    skip_bad: bool = False,
    decode: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Writes ``folder`` (an ImageFolder) as ``<out_dir>/<prefix>-NNNNNN.tar`` shards plus, beside each,
    its DALI index ``.idx``, and ``classes.txt`` with the class names in label order.

    Each sample is ``<key>.<jpg|jpeg|png|webp>`` (the file's bytes, not re-encoded) and ``<key>.cls``
    (the label as ASCII digits). ``shuffle`` writes the samples in a seeded random order, since
    readers of shards read sequentially and shuffle only within a buffer.

    ``out_dir`` is a folder or an ``s3://`` prefix. Each tar is published under its final name at once
    (a rename on a disk, a completed upload in a bucket), then its index, then ``classes.txt`` and
    last ``manifest.json`` (each tar's sample count and size, and the classes), which lets a loader
    over many shards read one object at start-up instead of every index: an interrupted run leaves no
    half-written shard under a shard's name. Existing shards with the same prefix are replaced only
    with ``overwrite=True`` (and those a smaller new set does not reach are removed, so no stale shard
    is read with the new ones).

    Each image is checked as the loader checks it (``samples.problem_of``: its format, size and
    whether a JPEG is cut short, from the bytes read anyway; ``decode=True``: decoded by DALI too, one
    decode an image). A bad image is an error naming it, or with ``skip_bad=True`` left out and listed
    in the manifest (``left_out``: file -> problem). Beside each tar, ``<name>.sources.json`` records
    each sample's source file, so that the loader's error about a sample names the file it came from.

    Returns the shard paths (or URLs).
    """
    import webdataset as wds

    from pipelines.probe import decode_samples

    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    source = ImageFolderSource.scan(folder)
    bad = [f for f in source.files if Path(f).suffix.lower().lstrip(".") not in SHARD_IMAGE_EXTENSIONS]
    if bad:
        raise ValueError(
            f"{bad[0]}: shards hold {', '.join(SHARD_IMAGE_EXTENSIONS)} images only ({len(bad)} file(s) affected)")
    out = os.fspath(out_dir)
    storage = storage_for(out)
    if "://" not in out:
        os.makedirs(out, exist_ok=True)
    here = [p.rsplit("/", 1)[-1] for p in (storage.files_here(out) if storage.is_dir(out) else [])]
    ours = re.compile(rf"{re.escape(prefix)}-\d{{6}}(\.tar|\.idx|{re.escape(SOURCES_SUFFIX)})")
    others = sorted(name for name in here if name.endswith((".tar", ".idx")) and not ours.fullmatch(name))
    if others:  # (one set a folder: its manifest and classes.txt describe every tar in it)
        raise FileExistsError(f"{storage.join(out, others[0])}: {out} holds another set's shards; write each set "
                              f"into a folder of its own (e.g. shards/train, shards/val)")
    existing = [storage.join(out, name) for name in here if ours.fullmatch(name)]
    unfinished = _unfinished(storage, out)
    if existing and not overwrite:
        why = (f"an earlier `shards make` into it did not finish ({unfinished})" if unfinished else
               f"it already holds {prefix}-*.tar shards ({existing[0].rsplit('/', 1)[-1]} ...)")
        raise FileExistsError(f"{out}: {why}; pass overwrite=True (--overwrite) to replace them")
    bar = ProgressBar(len(source), f"writing {out}", unit="img") if progress else None
    order = np.random.default_rng(seed).permutation(len(source)) if shuffle else np.arange(len(source))
    paths, entries, left_out = [], [], {}
    if "://" not in out:  # (what a killed run left: never read, since it is hidden and not a tar)
        for left in Path(out).glob(f"{WORK_PREFIX}*"):
            shutil.rmtree(left, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=WORK_PREFIX, dir=None if "://" in out else out) as work:
        # first, a manifest that says the set is being written: until the last step replaces it, the
        # loader and `verify` refuse the folder, whatever stops this run (SIGKILL included)
        _put_text(storage, work, out, MANIFEST_FILE, json.dumps({
            "format": MANIFEST_FORMAT, "unfinished": f"`shards make {os.fspath(folder)} {out}` started at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}"}) + "\n")
        root = source.root if "://" in source.root else os.path.abspath(source.root)
        for start in range(0, len(order), samples_per_shard):
            items = []  # (key, file, bytes) of this shard's good images
            for i in order[start : start + samples_per_shard]:
                file = source.files[i]
                data = source.storage.read(file)
                problem = problem_of(data)  # (the loader's diagnosis, from the bytes read anyway)
                if problem is None:
                    items.append((int(i), file, data))
                else:
                    left_out[file] = problem
            if decode:  # (every image decoded by DALI as the loader decodes it: costs a decode each)
                failed = decode_samples((file, data) for _, file, data in items)
                left_out.update(failed)
                items = [item for item in items if item[1] not in failed]
            if left_out and not skip_bad:
                file, problem = next(iter(left_out.items()))
                raise ValueError(f"{file}: {problem}; the shards would hold a bad image, and {out} is left an "
                                 f"unfinished set (pass skip_bad=True, --skip-bad, with --overwrite, to leave bad "
                                 f"images out and list them in {MANIFEST_FILE}; `python -m dali_resizer.check "
                                 f"{os.fspath(folder)}` lists them all)")
            if bar is not None:
                bar.update(min(samples_per_shard, len(order) - start))
            if not items:
                continue
            name = f"{prefix}-{len(paths):06d}"
            tmp = Path(work) / f"{name}.tar"
            with wds.TarWriter(str(tmp)) as sink:
                for i, file, data in items:
                    sink.write({"__key__": f"{i:09d}", Path(file).suffix.lower().lstrip("."): data,
                                "cls": str(int(source.labels[i])).encode()})
            count = build_index(tmp, tmp.with_suffix(".idx"))
            tar, index = storage.join(out, f"{name}.tar"), storage.join(out, f"{name}.idx")
            storage.put(tmp, tar)
            storage.put(tmp.with_suffix(".idx"), index)  # (after its tar: an index never points past one)
            _put_text(storage, work, out, f"{name}{SOURCES_SUFFIX}", json.dumps({  # each sample's source file
                "root": root, "files": {f"{i:09d}": _relative(file, source.root) for i, file, _ in items}}) + "\n")
            entries.append({"tar": f"{name}.tar", "samples": count, "bytes": tmp.stat().st_size})
            tmp.unlink()
            tmp.with_suffix(".idx").unlink()
            paths.append(Path(tar) if "://" not in out else tar)
        if not paths:
            raise ValueError(f"{os.fspath(folder)}: no good image to write ({len(left_out)} bad)")
        written = {f"{str(p)[: -len('.tar')]}{suffix}" for p in paths for suffix in (".tar", ".idx", SOURCES_SUFFIX)}
        for stale in sorted(set(existing) - written):
            storage.delete(stale)
        _put_text(storage, work, out, CLASSES_FILE, "".join(f"{c}\n" for c in source.classes))
        _put_text(storage, work, out, MANIFEST_FILE, json.dumps({  # (last: the set is whole)
            "format": MANIFEST_FORMAT, "classes": source.classes, "shards": entries,
            **({"left_out": left_out} if left_out else {})}, indent=1) + "\n")
    if bar is not None:
        bar.close()
    return paths


def _relative(file: str, root: str) -> str:
    return file[len(root.rstrip("/")) + 1:] if "://" in root else os.path.relpath(file, root)


def _put_text(storage, work: str, out: str, name: str, text: str) -> None:
    """Publishes ``text`` as ``out/name`` whole (through a file in ``work``)."""
    local = Path(work) / name
    local.write_text(text)
    storage.put(local, storage.join(out, name))
    local.unlink()


def _unfinished(storage, folder: str) -> str | None:
    """What the manifest of ``folder`` says of a ``shards make`` that has not finished, else None."""
    where = storage.join(folder, MANIFEST_FILE)
    try:
        return json.loads(storage.read(where)).get("unfinished")
    except (OSError, ValueError, AttributeError):
        return None


def verify_shards(shard_dir: str | os.PathLike, each_tar=None) -> dict[str, list[str]]:
    """Checks every ``*.tar`` in ``shard_dir`` (a folder, or an ``s3://`` prefix, whose tars are read
    whole, one at a time, into a temporary folder) against its index and the sample rules; returns the
    problems found, by kind (an empty dict when all is well). ``each_tar(tar, local, problems)``: more
    checks of each tar, while its local copy is at hand (``check`` decodes its images: one download)."""
    problems: dict[str, list[str]] = {}

    def say(kind: str, item: str) -> None:
        problems.setdefault(kind, []).append(item)

    shard_dir = os.fspath(shard_dir)
    storage = storage_for(shard_dir)
    tars = [p for p in storage.files_here(shard_dir) if p.endswith(".tar")] if storage.is_dir(shard_dir) else []
    if not tars:
        return {"no shards": [shard_dir]}
    name_of = {tar: tar.rsplit("/", 1)[-1] for tar in tars}
    classes_file = storage.join(shard_dir, CLASSES_FILE)
    classes = None
    if storage.is_file(classes_file):
        try:
            classes = parse_classes(storage.read(classes_file).decode(), classes_file)
        except ValueError as e:
            say("bad classes.txt", str(e))
    num_classes = len(classes) if classes is not None else None
    if num_classes is None:
        say("no classes.txt", shard_dir)
    manifest_file = storage.join(shard_dir, MANIFEST_FILE)
    if storage.is_file(manifest_file):
        mismatch = "manifest does not match the shards"
        try:
            manifest = json.loads(storage.read(manifest_file))
            if "unfinished" in manifest:
                say("unfinished set", f"{manifest_file}: {manifest['unfinished']} and did not finish; run it again "
                                      f"with --overwrite")
            listed = None if "unfinished" in manifest else {e["tar"]: e for e in manifest["shards"]}
        except (ValueError, KeyError, TypeError) as e:
            listed = None
            say(mismatch, f"{manifest_file}: unreadable ({e})")
        for name in sorted(set(listed or ()) - set(name_of.values())):
            say(mismatch, f"{storage.join(shard_dir, name)}: listed, but not in the folder")
        if listed is not None and classes is not None and manifest.get("classes") not in (None, classes):
            say(mismatch, f"{manifest_file}: other classes than {classes_file} ({len(manifest['classes'])} and "
                          f"{len(classes)})")
        for tar in tars if listed is not None else []:
            entry = listed.get(name_of[tar])
            index = tar[: -len(".tar")] + ".idx"
            size = storage.stat(tar).size
            try:
                count = read_index_count(index) if storage.is_file(index) else None
            except ValueError:  # (not an index at all: reported below, with the tar's other indexes)
                count = None
            if entry is None:
                problem = "not listed"
            elif entry.get("bytes") != size:
                problem = f"{entry.get('bytes')} bytes listed, {size} in the tar"
            elif count is not None and entry.get("samples") != count:
                problem = f"{entry.get('samples')} samples listed, {count} in its index"
            else:
                continue
            say(mismatch, f"{tar}: {problem}")
    with tempfile.TemporaryDirectory(prefix="shards-verify-") as work:
        for tar in tars:
            local = storage.local_copy(tar, work)
            try:
                _verify_tar(tar, local, storage, work, num_classes, say)
                if each_tar is not None:
                    each_tar(tar, local, problems)
            finally:
                if local != tar:
                    os.unlink(local)
    return problems


def _verify_tar(tar: str, local: str, storage, work: str, num_classes: int | None, say) -> None:
    """The checks of one tar (``tar``: its name, ``local``: a local file of its bytes)."""
    index = tar[: -len(".tar")] + ".idx"
    if not storage.is_file(index):
        say(NO_INDEX, index)
    else:
        problem = index_problem(tar, index)
        if problem is None:
            expected = os.path.join(work, "expected.idx")
            try:
                build_index(local, expected)
                if Path(expected).read_bytes() != storage.read(index):
                    problem = "differs from the tar's contents"
            finally:
                for suffix in ("", DUPLICATES_SUFFIX, CUT_SUFFIX, SPACED_SUFFIX):
                    Path(f"{expected}{suffix}").unlink(missing_ok=True)
        if problem is not None:
            say("stale index", f"{index}: {problem}")
    try:
        samples, duplicates, cut = tar_samples(local)
    except (tarfile.TarError, OSError) as e:
        say("unreadable tar", f"{tar}: {e}")
        return
    for name in cut:
        say("tar cut short", f"{tar}: " + (f"at byte {name[1:]}: whatever came after is lost"
                                           if name.startswith("@") else f"inside {name}"))
    for member in duplicates:
        say("duplicate key", f"{tar}: {member.name}")
    for sample in samples:
        for member in sample.members.values():
            if any(c.isspace() for c in member.name):
                say("member name with whitespace (left out of the index)", f"{tar}: {member.name!r}")
    with open(local, "rb") as f:
        for sample in samples:
            label = sample.member(SHARD_LABEL_EXTENSION)
            if label is not None:
                f.seek(label.offset_data)
                label = f.read(label.size)
            found = sample_problem(sample.has_image, label, num_classes)
            if found is None:
                continue
            kind, reason = found
            item = (f"{sample.key} ({label.strip()[:20]!r})" if kind == "non-integer label"
                    else f"{sample.key} ({reason})" if kind == "label out of range" else sample.key)
            say(kind, f"{tar}: {item}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dali_resizer.shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="write shards, their .idx files and classes.txt from an image folder")
    make.add_argument("src", help="image folder: SRC/<class>/<image>")
    make.add_argument("out", help="output folder")
    make.add_argument("--samples-per-shard", type=int, default=1000)
    make.add_argument("--prefix", default="shard", help="shards are named PREFIX-000000.tar, ...")
    make.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                      help="keep the folder's order (default: a seeded random order, since readers shuffle locally)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--overwrite", action="store_true", help="replace existing PREFIX-*.tar shards in OUT")
    make.add_argument("--skip-bad", action="store_true",
                      help="leave bad images out (listed in manifest.json) instead of stopping at the first")
    make.add_argument("--decode", action="store_true",
                      help="decode every image with DALI before writing it (default: check the bytes only)")
    verify = sub.add_parser("verify", help="check shards against their indexes, keys and labels")
    verify.add_argument("dir")
    index = sub.add_parser("index", help="(re)write the DALI index beside each tar")
    index.add_argument("tars", nargs="+")
    args = p.parse_args(argv)

    if args.command == "make":
        signal.signal(signal.SIGTERM, _interrupt)  # (as Ctrl-C: the run's temporary files are removed)
        try:
            paths = write_shards(args.src, args.out, samples_per_shard=args.samples_per_shard, prefix=args.prefix,
                                 shuffle=args.shuffle, seed=args.seed, overwrite=args.overwrite,
                                 skip_bad=args.skip_bad, decode=args.decode, progress=True)
        except (OSError, ValueError) as e:  # (FileExistsError, a missing folder, storage failures)
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"interrupted: {args.out} holds a partial set, which the loader refuses; run the same command "
                  f"with --overwrite", file=sys.stderr)
            return 130
        left_out = json.loads(storage_for(args.out).read(storage_for(args.out).join(args.out, MANIFEST_FILE))).get(
            "left_out", {})
        for file, problem in list(left_out.items())[:10]:
            print(f"left out: {file}: {problem}", file=sys.stderr)
        print(f"{len(paths)} shard(s) in {args.out}" + (f"; {len(left_out)} bad image(s) left out, listed in "
                                                        f"{MANIFEST_FILE}" if left_out else ""))
        return 0
    if args.command == "index":
        status = 0
        for tar in args.tars:
            index = os.path.splitext(tar)[0] + ".idx"
            count = build_index(tar, index)
            said = []
            for suffix, what in ((DUPLICATES_SUFFIX, "duplicate member(s)"), (CUT_SUFFIX, "cut-short member(s)"),
                                 (SPACED_SUFFIX, "member(s) whose names hold whitespace")):
                listed = Path(f"{index}{suffix}")
                if listed.is_file():
                    said.append(f"{len(listed.read_text().splitlines())} {what} left out, listed in {listed}")
            print(f"{tar}: {count} samples" + "".join(f"; {s}" for s in said))
            status = status or (1 if said else 0)
        return status
    try:
        problems = verify_shards(args.dir)
    except OSError as e:  # (the storage: a folder that is not one, an object store that does not answer)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return report_problems(problems)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def report_problems(problems: dict[str, list[str]], shown: int = 10) -> int:
    """Prints problems by kind (the first ``shown`` of each) on stdout; returns the exit status: 1 when
    any kind but notes (``"(ignored)"``, ``"(note: ..."``) is present, else 0."""
    for kind, items in sorted(problems.items()):
        print(f"{kind}: {len(items)}")
        for item in items[:shown]:
            print(f"  {item}")
        if len(items) > shown:
            print(f"  ... and {len(items) - shown} more")
    serious = sum(len(items) for kind, items in problems.items() if not _is_note(kind))
    notes = sum(len(items) for kind, items in problems.items() if _is_note(kind))
    print(("ok" if not serious else f"{serious} problem(s)") + (f", {notes} note(s)" if notes else ""))
    return 1 if serious else 0


def _is_note(kind: str) -> bool:
    return kind.endswith("(ignored)") or "(note:" in kind


if __name__ == "__main__":
    sys.exit(main())
