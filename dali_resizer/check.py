"""Scan a data set before training: every problem listed by kind, and optionally a clean file list.

    python -m dali_resizer.check imagenet/train --write-list imagenet-train-clean.txt
    python -m dali_resizer.check shards/train

For an image folder, every file is looked at: files the loader ignores (other extensions, files beside
the class folders), hidden image files (which torchvision's ImageFolder, and so the loader, reads),
empty class folders, unreadable files and broken links, images over the loader's ``max_pixels``, and every
image is decoded
by DALI as the loader would. ``--write-list`` writes the good images as a file list that ``DALILoader``
accepts as its source, with the same classes and labels as the whole folder. For shards: the checks
of ``python -m dali_resizer.shards verify`` plus a decode of every image.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dali_resizer.progress import ProgressBar
from dali_resizer.readers import FILE_LIST_HEADER
from dali_resizer.readers.folder import list_folder
from dali_resizer.samples import (
    MAX_PIXELS,
    SHARD_IMAGE_EXTENSIONS,
    image_size,
    oversize_problem,
    problem_of,
)
from dali_resizer.storage import read_each, storage_for

__all__ = ["DAMAGED", "check_folder", "check_shards", "main", "write_file_list"]

# An image that decodes while its decoder warns of corrupt data (a garbled or grey stretch): the loader
# reads it as decoded, as PIL (and so torchvision) does, and check names it without failing.
DAMAGED = "decodes with a warning of corrupt data (note: the loader reads it as decoded, as PIL does)"



def check_folder(root: str | os.PathLike, *, progress: bool = False) -> tuple[dict[str, list[str]], list[str]]:
    """Returns ``(problems by kind, good image files)`` for an ImageFolder layout, local or under
    ``s3://``, listed as the loader lists it (``readers.folder.list_folder``)."""
    listing = list_folder(root)
    root, storage, local = listing.root, listing.storage, "://" not in listing.root
    problems: dict[str, list[str]] = {}

    def note(kind: str, item: str) -> None:
        problems.setdefault(kind, []).append(item)

    for path in listing.beside:
        note("file beside the class folders (ignored)", path)
    for path in listing.ignored:
        note("not an image extension (ignored)", path)
    for name in listing.empty:
        note("empty class folder (the loader refuses it)", storage.join(root, name))
    if local:  # (a class folder that is a link to another class's folder: its images, under two labels)
        real = {name: os.path.realpath(os.path.join(root, name)) for name in listing.classes}
        for name in listing.classes:
            twin = next((other for other in listing.classes if other != name and real[other] == real[name]
                         and not os.path.islink(os.path.join(root, other))), None)
            if os.path.islink(os.path.join(root, name)) and twin is not None:
                note("class folder that is a link to another class folder (its images are read twice, under both "
                     "labels, as ImageFolder reads them)", f"{os.path.join(root, name)} -> {os.path.join(root, twin)}")
    for loop in listing.loops:
        note("symbolic link loop (its files are listed again at every level, as ImageFolder lists them)", loop)
    candidates: list[str] = []
    unlisted = set()
    for path, _ in listing.images:
        if path.rpartition("/")[2].startswith("."):
            note("hidden image file (read as a sample)", path)
        if local and os.path.islink(path) and not os.path.exists(path):
            note("broken symbolic link", path)
            continue
        if local and not os.access(path, os.R_OK):
            note("unreadable", path)
            continue
        if "\n" in path or "\r" in path:
            note("line break in the file name (read by the loader; left out of --write-list, which holds "
                 "a name a line)", repr(path))
            unlisted.add(path)
        candidates.append(path)

    from pipelines.probe import decode_samples

    bar = ProgressBar(len(candidates), f"decoding {root}", unit="img") if progress else None
    flagged: set[str] = set()
    bad: dict[str, str] = {}

    def images():  # each file read once: its header decides what the loader would not decode
        for path, data in read_each(candidates, bad):
            if bar is not None:
                bar.update(1)
            found = _header_problem(path, data, len(data))
            if found is not None:
                flagged.add(path)
                note(*found)
                continue
            yield path, data

    damaged: dict[str, str] = {}
    bad.update(decode_samples(images(), damaged=damaged))
    if bar is not None:
        bar.close()
    for path, problem in bad.items():
        note("cannot be decoded", f"{path}: {problem}")
    for path, problem in damaged.items():
        note(DAMAGED, f"{path}: {problem}")
    good = [p for p in candidates if p not in bad and p not in unlisted and p not in flagged]
    return problems, good


def check_shards(shard_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Problems by kind for a folder of shards (local, or an ``s3://`` prefix whose tars are read whole,
    one at a time): ``shards verify``, images over the loader's ``max_pixels`` (read from their
    headers), and a DALI decode of every other image, as the loader decodes them."""
    import tarfile

    from dali_resizer.readers.wds_index import tar_samples
    from dali_resizer.shards import verify_shards
    from pipelines.probe import decode_samples

    def decode(tar, local, problems):  # (verify_shards hands over each tar's local copy)
        def images():  # the samples as the loader groups them (tar_samples), each image read once
            samples, _, _ = tar_samples(local)
            with open(local, "rb") as f:
                for sample in samples:
                    for ext, member in sample.members.items():
                        if ext.lower() not in SHARD_IMAGE_EXTENSIONS:
                            continue
                        f.seek(member.offset_data)
                        name, data = f"{tar}: {member.name}", f.read(member.size)
                        found = _header_problem(name, data, len(data))
                        if found is not None:
                            problems.setdefault(found[0], []).append(found[1])
                            continue
                        yield name, data

        damaged: dict[str, str] = {}
        try:
            bad = decode_samples(images(), damaged=damaged)
        except (tarfile.TarError, OSError):
            return  # reported by verify_shards as an unreadable tar
        for name, problem in bad.items():
            problems.setdefault("cannot be decoded", []).append(f"{name}: {problem}")
        for name, problem in damaged.items():
            problems.setdefault(DAMAGED, []).append(f"{name}: {problem}")

    return verify_shards(shard_dir, each_tar=decode)


def _header_problem(name: str, head: bytes, size: int) -> tuple[str, str] | None:
    """(kind, item) for an image the loader does not decode because of its bytes, as the loader decides
    it (``samples.problem_of``): no image format DALI decodes, over ``MAX_PIXELS``, or a JPEG too short for
    its declared size; else None."""
    problem = problem_of(head, size, max_pixels=MAX_PIXELS)
    if problem is None:
        return None
    if problem == oversize_problem(MAX_PIXELS):
        width, height = image_size(head)
        return f"over the loader's max_pixels={MAX_PIXELS:,} (not decoded)", f"{name} ({width}x{height})"
    return "cannot be decoded", f"{name}: {problem}"


def write_file_list(root: str | os.PathLike, files: list[str], path: str | os.PathLike) -> None:
    """Writes ``files`` (under ``root``) as a list that ``DALILoader`` reads as an image folder."""
    broken = next((f for f in files if "\n" in str(f) or "\r" in str(f)), None)
    if broken is not None:
        raise ValueError(f"{broken!r}: a file name with a line break cannot be written to a file list")
    if "://" in str(root):  # (object storage: keys under the prefix, as listed)
        root = str(root).rstrip("/")
        relative = [str(f)[len(root) + 1:] for f in files]
    else:
        root = Path(root).resolve()
        relative = [Path(f).resolve().relative_to(root).as_posix() for f in files]
    lines = [f"{FILE_LIST_HEADER}\n", f"# root: {root}\n"] + [f"{name}\n" for name in relative]
    Path(path).write_text("".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dali_resizer.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="an image folder or a folder of WebDataset shards")
    p.add_argument("--write-list", metavar="PATH", help="image folders: write the good images as a file list")
    args = p.parse_args(argv)

    from dali_resizer.shards import report_problems

    data = args.data
    storage = storage_for(data)
    try:
        if not storage.is_dir(data):
            print(f"error: {data} is not a folder", file=sys.stderr)
            return 2
        if any(p.endswith(".tar") for p in storage.files_here(data)):
            problems, good = check_shards(data), None
        else:
            problems, good = check_folder(data, progress=True)
    except OSError as e:  # (the storage does not answer, or a tar could not be downloaded)
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.write_list and good is not None:
        write_file_list(data, good, args.write_list)
        print(f"{args.write_list}: {len(good)} good image(s)")
    return report_problems(problems)


if __name__ == "__main__":
    sys.exit(main())
