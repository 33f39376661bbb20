"""Run by tests/test_clients.py under ``torchrun --nproc_per_node=2``: a Lightning ``Trainer`` with the DDP
strategy on gloo trains two epochs on a DALILoader made in ``train_dataloader`` (after the process group
is up, so it shards by rank without arguments); each rank's training steps record their sample indices,
and rank 0 writes what every rank saw to the JSON file named on the command line."""

import json
import sys

import lightning as L
import torch
import torch.distributed as dist

from dali_resizer import PAD_LABEL, DALILoader


class Recorder(L.LightningModule):
    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder
        self.layer = torch.nn.Linear(3, 3)
        self.seen: dict[int, list[int]] = {}

    def train_dataloader(self):
        return DALILoader(self.folder, batch_size=2, shuffle=True, size=8, seed=4, return_index=True, num_threads=1,
                          device="cpu")

    def training_step(self, batch, batch_idx):
        images, labels, indices = batch
        self.seen.setdefault(self.current_epoch, []).extend(indices.tolist())
        logits = self.layer(images.mean(dim=(2, 3)))
        return torch.nn.functional.cross_entropy(logits, labels, ignore_index=PAD_LABEL)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    folder, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    model = Recorder(folder)
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
