"""An image folder (``root/<class>/**/<image>``, listed like torchvision's ``ImageFolder``), or a file
list of one written by ``python -m dali_resizer.check --write-list``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from dali_resizer.readers.base import Reader, Restart
from dali_resizer.sampler import Epoch
from dali_resizer.samples import (
    FOLDER_IMAGE_EXTENSIONS,
    PAD_LABEL,
    BadSampleError,
    problem_of,
    warn_user,
)
from dali_resizer.storage import Storage, read_each, storage_for

__all__ = ["FILE_LIST_HEADER", "FolderListing", "FolderReader", "ImageFolderSource", "list_folder"]

FILE_LIST_HEADER = "# dali_resizer file list v1"


@dataclass(frozen=True)
class ImageFolderSource:
    """An ImageFolder layout: ``root/<class>/**/<image>``; labels index the sorted class names.

    ``len``, ``classes``, ``class_to_idx``, ``samples`` and ``targets`` mean what they mean on
    ``torchvision.datasets.ImageFolder``.
    """

    root: str
    files: list[str]
    labels: np.ndarray  # (num_samples,) int64
    classes: list[str]
    class_to_idx: dict[str, int] = field(repr=False)
    storage: Storage = field(repr=False, compare=False, default_factory=lambda: storage_for("."))
    # symbolic links to a folder above them: their files are listed again at every level, as
    # torchvision's ImageFolder lists them ("<link> -> <target>")
    loops: list[str] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[str, int]:
        """``(path, label)`` of a sample, as ``ImageFolder.samples[index]``."""
        return self.files[index], int(self.labels[index])

    @property
    def samples(self) -> list[tuple[str, int]]:
        return list(zip(self.files, self.labels.tolist()))

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def reader(self, plan, ledger) -> FolderReader:
        return FolderReader(self, plan, ledger)

    @classmethod
    def scan(cls, root: str | os.PathLike) -> ImageFolderSource:
        """Lists ``root`` exactly as ``torchvision.datasets.ImageFolder`` does (same classes, same order)."""
        listing = list_folder(root)
        root = listing.root
        if not listing.classes:
            raise ValueError(f"{root}: no class folders found; expected the layout {root}/<class>/<image>")
        if listing.empty:
            shown = ", ".join(listing.empty[:5]) + (" ..." if len(listing.empty) > 5 else "")
            raise ValueError(
                f"{root}: {len(listing.empty)} class folder(s) hold no image ({shown}); "
                f"supported extensions: {', '.join(FOLDER_IMAGE_EXTENSIONS)}"
            )
        loops, files = listing.loops, [path for path, _ in listing.images]
        if loops:
            warn_user(f"{root}: {len(loops)} symbolic link loop(s) ({loops[0]}"
                      + (" ..." if len(loops) > 1 else "") + f"): their files are listed again at every level, "
                      f"as torchvision's ImageFolder lists them ({len(files)} files in all); "
                      f"`python -m dali_resizer.check {root}` lists them")
        labels = np.asarray([label for _, label in listing.images], dtype=np.int64)
        class_to_idx = {name: i for i, name in enumerate(listing.classes)}
        return cls(root, files, labels, listing.classes, class_to_idx, listing.storage, loops)

    @classmethod
    def from_dataset(cls, dataset) -> ImageFolderSource:
        """The files, labels and classes of a torchvision ``ImageFolder`` (or a ``DatasetFolder`` of images
        read by torchvision's image loader), as the object lists them."""
        from torchvision.datasets.folder import accimage_loader, default_loader, pil_loader

        if dataset.loader not in (default_loader, pil_loader, accimage_loader):
            raise ValueError(f"{type(dataset).__name__} at {dataset.root} reads its files with {dataset.loader!r}: "
                             f"DALILoader decodes images itself, so it takes a dataset read by torchvision's image "
                             f"loader (ImageFolder, or DatasetFolder(loader=default_loader))")
        if dataset.target_transform is not None:
            raise ValueError(f"{type(dataset).__name__} at {dataset.root} has target_transform="
                             f"{dataset.target_transform!r}: apply it to the labels of each batch instead")
        files = [path for path, _ in dataset.samples]
        other = next((f for f in files if not f.lower().endswith(FOLDER_IMAGE_EXTENSIONS)), None)
        if other is not None:
            raise ValueError(f"{other}: not an image file that DALILoader decodes "
                             f"({', '.join(FOLDER_IMAGE_EXTENSIONS)})")
        if not files:
            raise ValueError(f"{type(dataset).__name__} at {dataset.root} has no samples")
        root = os.fspath(dataset.root)
        return cls(root, files, np.asarray([label for _, label in dataset.samples], dtype=np.int64),
                   list(dataset.classes), dict(dataset.class_to_idx), storage_for(root))

    @classmethod
    def from_list(cls, list_path: str | os.PathLike) -> ImageFolderSource:
        """Reads a file list written by ``python -m dali_resizer.check --write-list``: a subset of an
        image folder, with the classes and labels of the whole folder (so labels never shift)."""
        list_path = os.fspath(list_path)
        lines = storage_for(list_path).read(list_path).decode().splitlines()
        if len(lines) < 2 or lines[0] != FILE_LIST_HEADER or not lines[1].startswith("# root: "):
            raise ValueError(f"{list_path}: not a dali_resizer file list (expected {FILE_LIST_HEADER!r} and '# root:')")
        root = lines[1][len("# root: "):]
        storage = storage_for(root)
        if not storage.is_dir(root):
            raise FileNotFoundError(f"{list_path}: its root {root} does not exist")
        classes = storage.subdirs(root)
        class_to_idx = {name: i for i, name in enumerate(classes)}
        files, labels = [], []
        for number, rel in enumerate(lines[2:], start=3):
            if not rel.strip():
                continue
            top = rel.split("/", 1)[0]
            if top not in class_to_idx or "/" not in rel:
                raise ValueError(f"{list_path}:{number}: {rel!r} is not inside a class folder of {root}")
            files.append(storage.join(root, rel))
            labels.append(class_to_idx[top])
        if not files:
            raise ValueError(f"{list_path}: lists no images")
        return cls(root, files, np.asarray(labels, dtype=np.int64), classes, class_to_idx, storage)


@dataclass(frozen=True)
class FolderListing:
    """What an image folder holds, listed once through its storage (local or ``s3://``) for the loader and
    for ``check``: the classes, the images as ``ImageFolder`` lists them (path, label), the class folders'
    other files, the files beside the class folders, the class folders without an image, and the
    symbolic link loops (``"<link> -> <target>"``)."""

    root: str
    classes: list[str]
    images: list[tuple[str, int]]
    ignored: list[str]
    beside: list[str]
    empty: list[str]
    loops: list[str]
    storage: Storage = field(repr=False, compare=False)


def list_folder(root: str | os.PathLike) -> FolderListing:
    """The one listing of an image folder: torchvision's ``ImageFolder`` rules (classes: the sorted
    subfolders; images: their files, nested too, with an image extension)."""
    root = os.fspath(root)
    storage = storage_for(root)
    classes = storage.subdirs(root)
    images: list[tuple[str, int]] = []
    ignored: list[str] = []
    empty: list[str] = []
    loops: list[str] = []
    for label, name in enumerate(classes):
        before = len(images)
        for path in storage.files(storage.join(root, name), loops):
            if path.lower().endswith(FOLDER_IMAGE_EXTENSIONS):
                images.append((path, label))
            else:
                ignored.append(path)
        if len(images) == before:
            empty.append(name)
    return FolderListing(root, classes, images, ignored, storage.files_here(root), empty, loops, storage)


class FolderReader(Reader):
    """Reads an :class:`ImageFolderSource` with ``pipelines.image_folder_pipeline``.

    The epoch's order is decided here (one permutation of ``(seed, epoch)`` for every shard), and each
    shard's files are handed to DALI as a list, with each file's index in the source as its DALI
    label. A skipped file's place in later lists is taken by a good file of the shard whose id is
    ``index + len(source)``, which reads as padding: positions and batch counts never move.
    """

    def __init__(self, source: ImageFolderSource, plan, ledger) -> None:
        super().__init__(source, plan, ledger)
        self._labels = torch.from_numpy(source.labels)

    def describe(self) -> str:
        return "ImageFolder"

    def nothing_left(self) -> str | None:
        if not len(self.ledger) or any(f not in self.ledger for f in self.source.files):
            return None
        return (f"{self.source.root}: every image of the source is bad ({len(self.ledger)} skipped: loader.skipped "
                f"names them); nothing is left to read")

    def epoch_samples(self, epoch: Epoch) -> tuple[list[str], np.ndarray]:
        """This rank's files and sample ids for ``epoch``, skipped files replaced by stand-ins."""
        total = len(self.source)
        order = epoch.order(total)
        if epoch.carried is not None:  # taken over mid-epoch: the rest of the order, split among this world
            order = order[~epoch.carried.mask(total)[order]]
        # Shard the epoch's global order ourselves: every rank sees the same permutation.
        low, high = epoch.bounds(len(order))
        mine = order[low:high]
        files = [self.source.files[i] for i in mine]
        if len(self.ledger):
            good = next((f for f in files if f not in self.ledger), None) or next(
                (f for f in self.source.files if f not in self.ledger), None)
            if good is None:
                raise BadSampleError(self.nothing_left())
            for k, path in enumerate(files):
                if path in self.ledger:
                    files[k], mine[k] = good, mine[k] + total  # ids >= total read as padding
        return files, mine

    def pipeline(self, epoch: Epoch, checkpoint: bytes | None = None, base: int = 0, replay: bool = False):
        import pipelines

        files, ids = self.epoch_samples(epoch)
        start = base * self.plan.batch_size
        pipe = pipelines.image_folder_pipeline(files[start:], ids[start:].tolist(), checkpoint=checkpoint,
                                               replay=replay, **self.plan.pipeline_settings(epoch))
        pipe.build()
        return pipe

    def labels(self, out):
        status = out["status"].view(-1)
        indices = out["targets"].view(-1).to(torch.int64)
        padding = indices >= len(self.source)  # a skipped file's place, filled by a good one
        labels = self._labels[indices % len(self.source)]
        problems = {}
        if bool(status.any()):
            files = [None if pad else self.source.files[i] for i, pad in zip(indices.tolist(), padding.tolist())]
            for row in status.nonzero().view(-1).tolist():
                if files[row] is None:
                    continue
                problems[files[row]] = self._problem(files[row], int(status[row]))
                padding[row] = True
        ids = (indices % len(self.source)).numpy()
        labels[padding] = PAD_LABEL
        indices[padding] = -1
        return labels, indices, ids, problems

    def _problem(self, path: str, status: int) -> str:
        """Why the pipeline did not decode a file (its status: see ``pipelines.image_status``)."""
        storage = self.source.storage
        return problem_of(storage.read(path, 0, 1 << 16), storage.stat(path).size, status=status,
                          max_pixels=self.plan.spec.max_pixels)

    def _window(self, epoch: Epoch, done: int) -> list[str]:
        """The files of the batches DALI was preparing after batch ``done``, once each."""
        files, _ = self.epoch_samples(epoch)
        b = self.plan.batch_size
        return list(dict.fromkeys(files[done * b : (done + self.plan.prefetch_queue_depth + 2) * b]))

    def missing(self, epoch: Epoch, done: int) -> list[str]:
        return [f for f in self._window(epoch, done) if not self.source.storage.is_file(f)]

    def recover(self, failure, error, epoch, done, checkpoint, base=0):
        storage = self.source.storage
        if failure.sample and storage.is_file(failure.sample):
            bad = {failure.sample: self.named(storage.read(failure.sample), failure)}
        else:
            bad = {}
            bad.update(self.probe(read_each((f for f in self._window(epoch, done) if f not in self.ledger), bad)))
        bad = self.report(bad, [path for path in bad if path in self.ledger], failure, "the batch", error)
        return Restart(bad, base=done)  # the rest of the epoch's list, the bad file replaced by a stand-in
