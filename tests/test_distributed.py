"""Real processes under torchrun (gloo, CPU): sharding from torch.distributed, equal batch counts,
exactly-once epochs, consistent reshuffling and resume on every rank."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from dali_resizer.loader import PAD_LABEL
from tests.conftest import write_shards

SCRIPT = Path(__file__).with_name("dist_loader_check.py")
RESUME_SCRIPT = Path(__file__).with_name("dist_resume_check.py")


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


def torchrun_resume(nproc: int, phase: str, source, batch_size: int, stop: int, path: Path, port: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
           str(RESUME_SCRIPT), phase, str(source), str(batch_size), str(stop), str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "before", "after"), [("shards", 2, 3), ("shards", 3, 2), ("folder", 2, 3),
                                                       ("folder", 3, 2)])
def test_a_mid_epoch_checkpoint_of_n_ranks_resumes_in_m(image_folder, tmp_path, kind, before, after):
    """torchrun with N ranks stops epoch 1 after a batch or two and saves every rank's state; torchrun
    with M ranks (another batch size too) loads that list and finishes the epoch: every sample is
    delivered exactly once across both runs, and the M ranks yield the same number of batches."""
    if kind == "shards":
        source = tmp_path / "shards"
        source.mkdir()
        write_shards(source, [9, 7, 8, 6, 5], unique_labels=True)  # 35 samples, 5 tars
        total = 35
    else:
        source, total = image_folder, 11
    path = tmp_path / "run"
    port = 29700 + 10 * (kind == "folder") + before
    stop = 2 if kind == "shards" else 1  # (mid-epoch: 3 ranks x 2 batches of 2 would be all 11 images)
    torchrun_resume(before, "save", source, 2, stop, path, port)
    torchrun_resume(after, "load", source, 3, 0, path, port + 5)
    saved = pickle.loads(path.with_suffix(".saved").read_bytes())
    resumed = pickle.loads(path.with_suffix(".resumed").read_bytes())
    assert len(saved["states"]) == before and len(resumed) == after
    first = [i for rank in saved["delivered"] for batch in rank for i in batch if i >= 0]
    assert sum(len(batch) for rank in saved["delivered"] for batch in rank) == before * stop * 2  # batches of 2
    rest = [i for rank in resumed for batch in rank["delivered"] for i in batch if i >= 0]
    assert sorted(first + rest) == list(range(total))
    assert {len(rank["delivered"]) for rank in resumed} == {resumed[0]["len"]}
    assert {rank["next_epoch"] for rank in resumed} == {2}
