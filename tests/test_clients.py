"""Real clients driving DALILoader as they drive a DataLoader: a Lightning ``Trainer`` (one process, and
two under DDP on gloo), HuggingFace accelerate, and a training script written as torchvision's reference
script is, under torchrun. Each records the sample indices its steps saw; the tests compare them with
a plain loop's epochs and with an uninterrupted run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import accelerate
import lightning as L
import numpy as np
import pytest
import torch

from dali_resizer import PAD_LABEL, DALILoader
from tests.conftest import write_jpeg_folder

SCRIPTS = Path(__file__).parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """14 small JPEGs in 3 classes: 7 batches of 2 on one rank."""
    return write_jpeg_folder(tmp_path_factory.mktemp("clients"), 14, 3, seed=8)


def make_loader(folder, **kw):
    return DALILoader(folder, batch_size=2, shuffle=True, size=8, seed=4, return_index=True, num_threads=1, **kw)


def plain_epochs(folder, epochs: int) -> list[list[int]]:
    """What a plain ``for epoch: loader.set_epoch(epoch); for batch in loader`` loop sees."""
    loader = make_loader(folder)
    seen = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        seen.append([i for _, _, idx in loader for i in idx.tolist()])
    return seen


class Recorder(L.LightningModule):
    """A tiny model whose training steps record the indices of their batches, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 3)
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        images, labels, indices = batch
        self.seen.setdefault(self.current_epoch, []).extend(indices.tolist())
        logits = self.layer(images.mean(dim=(2, 3)))
        return torch.nn.functional.cross_entropy(logits, labels, ignore_index=PAD_LABEL)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(tmp_path, callbacks=(), **kw):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks),
                     enable_checkpointing=bool(callbacks), **kw)


def test_a_lightning_trainer_reads_each_epoch_as_a_plain_loop(folder, tmp_path):
    model = Recorder()
    trainer(tmp_path, max_epochs=3).fit(model, make_loader(folder))
    expected = plain_epochs(folder, 3)
    assert [model.seen[e] for e in range(3)] == expected
    assert all(sorted(epoch) == list(range(14)) for epoch in expected) and expected[0] != expected[1]


@pytest.mark.parametrize("where", ["mid-epoch", "epoch boundary"])
def test_lightning_resumes_the_uninterrupted_order(folder, tmp_path, where):
    """A checkpoint Lightning wrote (with the loader's state_dict in it), loaded by a new Trainer with a
    new loader: the steps after it see what the uninterrupted run's steps saw."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    every = {"every_n_train_steps": 3} if where == "mid-epoch" else {"every_n_epochs": 1}
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}-{step}", **every)
    whole = Recorder()
    trainer(tmp_path, [saving], max_epochs=2).fit(whole, make_loader(folder))
    name = "epoch=0-step=3.ckpt" if where == "mid-epoch" else "epoch=0-step=7.ckpt"
    resumed = Recorder()
    trainer(tmp_path, [ModelCheckpoint(dirpath=tmp_path / "again")], max_epochs=2).fit(
        resumed, make_loader(folder), ckpt_path=tmp_path / "ckpt" / name)
    if where == "mid-epoch":
        assert resumed.seen == {0: whole.seen[0][3 * 2:], 1: whole.seen[1]}
    else:
        assert resumed.seen == {1: whole.seen[1]}


@pytest.mark.slow
def test_a_lightning_trainer_under_ddp_reads_every_sample_once_per_epoch(folder, tmp_path):
    """torchrun x2, Lightning's DDP strategy on gloo, the loader made in the module's train_dataloader
    (so each rank builds its own after the process group is up)."""
    out = tmp_path / "seen.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPTS.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29811",
           str(SCRIPTS / "lightning_ddp_check.py"), str(folder), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert len(ranks) == 2
    for epoch in ("0", "1"):
        real = [i for rank in ranks for i in rank["seen"][epoch] if i >= 0]
        assert sorted(real) == list(range(14))  # every sample exactly once across the ranks
        assert len({len(rank["seen"][epoch]) for rank in ranks}) == 1  # equal steps on both ranks
    assert ranks[0]["seen"]["0"] != ranks[0]["seen"]["1"]  # Lightning's set_epoch reached the order
    for rank in ranks:  # what a plain loop of that rank reads
        loader = make_loader(folder, shard_id=rank["rank"], num_shards=2)
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            assert rank["seen"][str(epoch)] == [i for _, _, idx in loader for i in idx.tolist()]


# -- accelerate -------------------------------------------------------------------------------------


def test_accelerate_prepares_checkpoints_and_restores_the_loader(folder, tmp_path):
    """``Accelerator.prepare`` keeps the loader as it is (batches already on the device);
    ``register_for_checkpointing`` saves its state with ``save_state`` and ``load_state`` restores it
    mid-epoch into a new loader, which then yields the rest of the uninterrupted epoch."""
    full = plain_epochs(folder, 1)[0]
    accelerator = accelerate.Accelerator(cpu=True, project_dir=str(tmp_path))
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = make_loader(folder)
    model, optimizer, prepared = accelerator.prepare(model, optimizer, loader)
    assert prepared is loader
    accelerator.register_for_checkpointing(loader)
    loader.set_epoch(0)
    head = []
    for step, (images, labels, indices) in enumerate(loader):
        loss = torch.nn.functional.cross_entropy(model(images.mean(dim=(2, 3))), labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        head += indices.tolist()
        if step == 2:
            accelerator.save_state(str(tmp_path / "state"))
            break
    again = accelerate.Accelerator(cpu=True, project_dir=str(tmp_path))
    model2 = torch.nn.Linear(3, 3)
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.01)
    loader2 = make_loader(folder)
    model2, optimizer2, loader2 = again.prepare(model2, optimizer2, loader2)
    again.register_for_checkpointing(loader2)
    again.load_state(str(tmp_path / "state"))
    rest = [i for _, _, idx in loader2 for i in idx.tolist()]
    assert head + rest == full


def test_accelerate_skip_first_batches_yields_the_rest_of_the_epoch(folder):
    """accelerate's way to resume a plain DataLoader: a DataLoader rebuilt from ``loader.dataset`` and
    DataLoader's attributes, skipping the first batches. It yields the rest of the epoch, batch for
    batch, pixels included (the skipped batches are decoded, as they are for any iterable dataset;
    ``register_for_checkpointing`` above resumes without decoding them)."""
    loader = make_loader(folder)
    loader.set_epoch(1)
    full = list(loader)
    again = make_loader(folder)
    again.set_epoch(1)
    rest = list(accelerate.skip_first_batches(again, 3))
    assert len(rest) == len(full) - 3
    for (x, y, i), (a, b, j) in zip(rest, full[3:], strict=True):
        assert torch.equal(i, j) and torch.equal(y, b) and torch.equal(x, a)


# -- a torchvision-style training script ------------------------------------------------------------


def run_script(loader: str, train_dir, val_dir, out: Path, port: int, *flags: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPTS.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(SCRIPTS / "torchvision_style_train.py"), "--train-dir", str(train_dir), "--val-dir", str(val_dir),
           "--loader", loader, "--record", str(out), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_a_torchvision_style_script_swaps_one_name(folder, image_folder, tmp_path):
    """The same script with ``DataLoader`` and with ``DALILoader`` (``--loader``), under torchrun x2: the
    DALI form reads each epoch as a plain loop over that rank reads it (the script's own
    ``train_sampler.set_epoch`` reaching the order, the preset's ``--auto-augment ra --random-erase``
    translated into the graph), every training and validation image once per epoch across the ranks, with
    the batch counts of the DataLoader form."""
    from torchvision.datasets import ImageFolder

    recipe = ("--auto-augment", "ra", "--ra-magnitude", "5", "--random-erase", "0.25")  # (the graph runs them)
    dali = run_script("dali", folder, image_folder, tmp_path / "dali.json", 29831, *recipe)
    torch_form = run_script("torch", folder, image_folder, tmp_path / "torch.json", 29833, *recipe)
    targets, val_targets = ImageFolder(str(folder)).targets, ImageFolder(str(image_folder)).targets
    assert [(r["len"], r["len_test"]) for r in dali] == [(r["len"], r["len_test"]) for r in torch_form] == [(4, 3)] * 2
    for rank in dali:
        plain = DALILoader(folder, batch_size=2, shuffle=True, size=16, shard_id=rank["rank"], num_shards=2,
                           return_index=True, auto_augment="ra", ra_magnitude=5, random_erase=0.25)
        orders = []
        for epoch in (0, 1):
            plain.set_epoch(epoch)
            batches = list(plain)
            order = [i for _, _, idx in batches for i in idx.tolist()]
            assert rank["seen"][str(epoch)] == [targets[i] if i >= 0 else PAD_LABEL for i in order]
            # the images too: the preset's RandAugment and RandomErasing ran, as those arguments run them
            assert rank["seen"][f"sums{epoch}"] == pytest.approx([float(x.double().sum()) for x, _, _ in batches])
            orders.append(order)
        assert orders[0] != orders[1]
        assert all(np.isfinite(rank["losses"]))
    for epoch in ("0", "1"):
        assert sorted(y for r in dali for y in r["seen"][epoch] if y != PAD_LABEL) == sorted(targets)
        assert sorted(y for r in dali for y in r["evaluated"][epoch] if y != PAD_LABEL) == sorted(val_targets)
