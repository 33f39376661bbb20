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
import io
import os
import sys
from pathlib import Path

from dali_resizer.progress import ProgressBar
from dali_resizer.readers import FILE_LIST_HEADER
from dali_resizer.samples import FOLDER_IMAGE_EXTENSIONS, MAX_PIXELS, SHARD_IMAGE_EXTENSIONS

__all__ = ["check_folder", "check_shards", "main", "write_file_list"]



def _decode_batches(paths: list[str], batch_size: int, bar: ProgressBar | None) -> dict[str, str]:
    """DALI-decodes ``paths`` a batch at a time; a failing batch is probed file by file."""
    import pipelines
    from pipelines.probe import probe_files

    problems: dict[str, str] = {}
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        try:
            pipe = pipelines.decode_only_pipeline(chunk, batch_size=len(chunk), num_threads=2, device_id=None)
            pipe.build()
            pipe.run()
        except RuntimeError:
            problems.update(probe_files(chunk))
        if bar is not None:
            bar.update(len(chunk))
    return problems


def check_folder(root: str | os.PathLike, *, progress: bool = False) -> tuple[dict[str, list[str]], list[str]]:
    """Returns ``(problems by kind, good image files)`` for an ImageFolder layout."""
    from PIL import Image

    root = Path(root)
    problems: dict[str, list[str]] = {}

    def note(kind: str, item: str) -> None:
        problems.setdefault(kind, []).append(item)

    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    for entry in os.scandir(root):
        if not entry.is_dir():
            note("file beside the class folders (ignored)", entry.path)
    candidates: list[str] = []
    for name in classes:
        before = len(candidates)
        for dirpath, _, fnames in sorted(os.walk(root / name, followlinks=True)):
            for fname in sorted(fnames):
                path = os.path.join(dirpath, fname)
                if not fname.lower().endswith(FOLDER_IMAGE_EXTENSIONS):
                    note("not an image extension (ignored)", path)
                    continue
                if fname.startswith("."):
                    note("hidden image file (read as a sample)", path)
                if os.path.islink(path) and not os.path.exists(path):
                    note("broken symbolic link", path)
                    continue
                if not os.access(path, os.R_OK):
                    note("unreadable", path)
                    continue
                candidates.append(path)
        if len(candidates) == before:
            note("empty class folder (the loader refuses it)", str(root / name))

    oversize = set()
    for path in candidates:
        with open(path, "rb") as f:
            size = _header_size(f.read(1 << 16), Image)  # (the header is at the start)
        if size is not None and size[0] * size[1] > MAX_PIXELS:
            oversize.add(path)
            note(f"over the loader's max_pixels={MAX_PIXELS:,} (not decoded)", f"{path} ({size[0]}x{size[1]})")
    candidates = [p for p in candidates if p not in oversize]  # never decoded here either
    bar = ProgressBar(len(candidates), f"decoding {root}", unit="img") if progress else None
    bad = _decode_batches(candidates, 64, bar)
    if bar is not None:
        bar.close()
    for path, problem in bad.items():
        note("cannot be decoded", f"{path}: {problem}")
    good = [p for p in candidates if p not in bad]
    return problems, good


def check_shards(shard_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Problems by kind for a folder of shards: ``shards verify``, images over the loader's
    ``max_pixels`` (read from their headers), and a DALI decode of every other image, as the loader
    decodes them."""
    import tarfile

    from PIL import Image

    from dali_resizer.shards import verify_shards
    from pipelines.probe import decode_samples

    problems = verify_shards(shard_dir)

    def images(tar):
        with tarfile.open(tar, mode="r:") as archive:
            for member in archive:
                base = os.path.basename(member.name)
                ext = base.split(".", 1)[1].lower() if "." in base else ""
                if member.isfile() and not base.startswith(".") and ext in SHARD_IMAGE_EXTENSIONS:
                    name, data = f"{tar}: {member.name}", archive.extractfile(member).read()
                    size = _header_size(data, Image)
                    if size is not None and size[0] * size[1] > MAX_PIXELS:
                        problems.setdefault(f"over the loader's max_pixels={MAX_PIXELS:,} (not decoded)", []).append(
                            f"{name} ({size[0]}x{size[1]})")
                        continue
                    yield name, data

    for tar in sorted(Path(shard_dir).glob("*.tar")):
        try:
            bad = decode_samples(images(tar))
        except (tarfile.TarError, OSError):
            continue  # reported by verify_shards as an unreadable tar
        for name, problem in bad.items():
            problems.setdefault("cannot be decoded", []).append(f"{name}: {problem}")
    return problems


def _header_size(data: bytes, Image) -> tuple[int, int] | None:
    """(width, height) from an image's header (PIL reads no pixels), or None where PIL can't say."""
    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # read sizes, however large
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # DALI's decode says more
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit


def write_file_list(root: str | os.PathLike, files: list[str], path: str | os.PathLike) -> None:
    """Writes ``files`` (under ``root``) as a list that ``DALILoader`` reads as an image folder."""
    root = Path(root).resolve()
    lines = [f"{FILE_LIST_HEADER}\n", f"# root: {root}\n"]
    lines += [f"{Path(f).resolve().relative_to(root).as_posix()}\n" for f in files]
    Path(path).write_text("".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dali_resizer.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="an image folder or a folder of WebDataset shards")
    p.add_argument("--write-list", metavar="PATH", help="image folders: write the good images as a file list")
    args = p.parse_args(argv)

    data = Path(args.data)
    if not data.is_dir():
        print(f"error: {data} is not a folder", file=sys.stderr)
        return 2
    from dali_resizer.shards import report_problems

    if any(data.glob("*.tar")):
        problems, good = check_shards(data), None
    else:
        problems, good = check_folder(data, progress=True)
    if args.write_list and good is not None:
        write_file_list(data, good, args.write_list)
        print(f"{args.write_list}: {len(good)} good image(s)")
    return report_problems(problems)


if __name__ == "__main__":
    sys.exit(main())
