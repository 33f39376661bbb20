"""``loader.dataset``: the source as torch sees a dataset.

Indexed, it is what the source knows of a sample (``ImageFolder.samples[i]``: path and label; for shards
the tar and the sample's key), with the source's ``len``, ``classes``, ``class_to_idx``, ``samples``,
``targets``. Iterated, it is the stream of samples the loader batches, one at a time, as an
``IterableDataset``: so code that rebuilds a ``DataLoader`` from ``loader.dataset`` and DataLoader's
arguments (accelerate's ``skip_first_batches``) batches the loader's own samples again, decoded and
augmented by DALI, on its device.
"""

from __future__ import annotations

import weakref

from torch.utils.data import IterableDataset

__all__ = ["LoaderDataset"]


class LoaderDataset(IterableDataset):
    """The source of a :class:`~dali_resizer.loader.DALILoader` (see the module's docstring)."""

    def __init__(self, source, loader) -> None:
        self.source = source
        self._loader = weakref.ref(loader)  # (the loader owns this object, not the other way round)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        return self.source[index]

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("source", "_loader"):
            raise AttributeError(name)
        return getattr(self.source, name)

    def __iter__(self):
        """The samples of the loader's next epoch (the batches of ``iter(loader)``, one row at a time)."""
        loader = self._loader()
        if loader is None:
            raise RuntimeError("the DALILoader of this dataset is gone: iterate a loader, not its dataset")
        for batch in loader:
            yield from zip(*batch)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"
