"""Real processes under torchrun (gloo, CPU): sharding from torch.distributed, equal batch counts,
exactly-once epochs, consistent reshuffling and resume on every rank."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dali_resizer.loader import PAD_LABEL
from tests.conftest import write_shards

SCRIPT = Path(__file__).with_name("dist_loader_check.py")


def torchrun(nproc: int, source, batch_size: int, drop_last: bool, out: Path, port: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
           str(SCRIPT), str(source), str(batch_size), "1" if drop_last else "0", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def check(ranks: list[dict], total: int, batch_size: int, drop_last: bool, padding_id: int) -> None:
    nproc = len(ranks)
    assert [r["shard"] for r in ranks] == [[i, nproc] for i in range(nproc)]  # read from torch.distributed
    for epoch in range(2):
        counts = [len(r["epochs"][epoch]) for r in ranks]
        assert len(set(counts)) == 1 and counts[0] == ranks[0]["len"]  # equal batch counts: no DDP hang
        flat = [i for r in ranks for batch in r["epochs"][epoch] for i in batch]
        real = [i for i in flat if i != padding_id]
        if drop_last:
            assert len(real) == len(set(real)) == counts[0] * batch_size * nproc
        else:
            assert sorted(real) == list(range(total))  # every sample exactly once across the ranks
            assert len(flat) - len(real) == -(-total // nproc) * nproc - total  # padding only to even out
    assert [r["epochs"][0] for r in ranks] != [r["epochs"][1] for r in ranks]  # set_epoch reshuffles
    for r in ranks:
        assert r["resumed"] == r["epochs"][1]  # stopped and restored: the same batches


@pytest.mark.slow
@pytest.mark.parametrize(("batch_size", "drop_last"), [(2, False), (3, False), (2, True)])
def test_image_folder_on_two_ranks(image_folder, tmp_path, batch_size, drop_last):
    ranks = torchrun(2, image_folder, batch_size, drop_last, tmp_path / "out.json", port=29600 + batch_size + drop_last)
    check(ranks, 11, batch_size, drop_last, padding_id=-1)


@pytest.mark.slow
@pytest.mark.parametrize(("counts", "nproc"), [([6, 1], 2), ([7], 2), ([4, 3, 2], 3)])
def test_shards_on_ranks(tmp_path, counts, nproc):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shards(shards, counts, unique_labels=True)  # uneven shards, and fewer shards than ranks
    ranks = torchrun(nproc, shards, 2, False, tmp_path / "out.json", port=29650 + len(counts) + nproc)
    check(ranks, sum(counts), 2, False, padding_id=PAD_LABEL)
