"""Run by tests/test_distributed.py under ``torchrun``: one world saves mid-epoch, another resumes.

``save``: each rank reads ``stop`` batches of epoch 1; the states of all ranks (``all_gather_object``)
and the sample indices each rank delivered are written by rank 0. ``load``: each rank of this world
(of any size) loads that list of states and reads the rest of the epoch; rank 0 writes what every rank
delivered and each rank's ``len(loader)``.
"""

import pickle
import sys

import torch
import torch.distributed as dist

from dali_resizer import DALILoader


def main() -> None:
    phase, source, batch_size, stop, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    loader = DALILoader(source, batch_size=batch_size, shuffle=True, size=8, seed=11, num_threads=1, device="cpu",
                        return_index=True, index_dir=path + ".idx")
    if phase == "save":
        loader.set_epoch(1)
        delivered = []
        for _, _, idx in loader:
            delivered.append(idx.tolist())
            if len(delivered) == stop:
                break
        record = {"delivered": delivered, "state": loader.state_dict()}
    else:
        with open(path + ".saved", "rb") as f:
            loader.load_state_dict(pickle.load(f)["states"])
        record = {"len": len(loader), "delivered": [idx.tolist() for _, _, idx in loader],
                  "next_epoch": loader.state_dict()["epoch"]}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, record)
    if dist.get_rank() == 0:
        if phase == "save":
            out = {"states": [r["state"] for r in gathered], "delivered": [r["delivered"] for r in gathered]}
            with open(path + ".saved", "wb") as f:
                pickle.dump(out, f)
        else:
            with open(path + ".resumed", "wb") as f:
                pickle.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
