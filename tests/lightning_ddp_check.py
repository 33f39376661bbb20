"""Run by tests/test_clients.py under ``torchrun --nproc_per_node=2``: a Lightning ``Trainer`` with the DDP
strategy on gloo trains two epochs on a DALILoader made in ``train_dataloader`` (after the process group
is up, so it shards by rank without arguments); each rank's training steps record their sample indices,
and rank 0 writes what every rank saw to the JSON file named on the command line."""

import json
import sys

import lightning as L
import torch
import torch.distributed as dist

from dali_resizer import DALILoader
from tests.test_clients import Recorder


class FromItsOwnLoader(Recorder):
    """``tests.test_clients``'s recording module, making its loader in ``train_dataloader`` as DDP needs."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def train_dataloader(self):
        return DALILoader(self.folder, batch_size=2, shuffle=True, size=8, seed=4, return_index=True, num_threads=1,
                          device="cpu")


def main() -> None:
    folder, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    model = FromItsOwnLoader(folder)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": dist.get_rank(), "seen": model.seen})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)


if __name__ == "__main__":
    main()
