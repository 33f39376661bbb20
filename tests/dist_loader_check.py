"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=N``: one process per rank.

Each rank builds a DALILoader with no sharding arguments (they come from torch.distributed), records
what it yields over two epochs and over an interrupted-and-resumed epoch, and rank 0 writes everything
gathered from all ranks to the JSON file named on the command line.
"""

import json
import sys

import torch
import torch.distributed as dist

from dali_resizer import DALILoader


def ids(batch, by_label: bool) -> list[int]:
    # Folders: the sample index; shards (written with label = sample number): the label.
    return batch[1].tolist() if by_label else batch[2].tolist()


def main() -> None:
    source, batch_size, drop_last, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
    by_label = source.endswith(".tar") or "shards" in source
    dist.init_process_group("gloo")
    torch.set_num_threads(1)

    def make():
        return DALILoader(source, batch_size=batch_size, shuffle=True, size=8, drop_last=drop_last, seed=11,
                          num_threads=1, device="cpu", return_index=True, index_dir=out + ".idx")

    loader = make()
    record = {"rank": dist.get_rank(), "shard": [loader.shard_id, loader.num_shards], "len": len(loader),
              "epochs": []}
    for epoch in range(2):
        loader.set_epoch(epoch)
        record["epochs"].append([ids(b, by_label) for b in loader])

    # Resume: stop epoch 1 after one batch, restore into a new loader, finish the epoch.
    first = make()
    first.set_epoch(1)
    it = iter(first)
    head = [ids(next(it), by_label)]
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    record["resumed"] = head + [ids(b, by_label) for b in resumed]
    if loader.cache is not None:  # (shards in object storage: what this rank downloaded into the node's cache)
        record["downloads"] = sum(x.cache.downloads for x in (loader, first, resumed))

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, record)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
