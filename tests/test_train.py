"""The training CLI end to end on tiny generated data, with the real DALI CPU pipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dali_resizer import make_synthetic_folder
from dali_resizer.train import main

TINY = ["--backbone", "resnet18", "--size", "16", "--input-size", "32", "--batch-size", "4", "--num-threads", "1",
        "--quiet", "--lr", "0.01", "--device", "cpu"]  # (on a GPU host too: torchrun's ranks share no GPU here)
LOUD = [a for a in TINY if a != "--quiet"]  # (what the run says, on stderr)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    make_synthetic_folder(root / "train", num_classes=3, images_per_class=4, min_side=24, max_side=40)
    make_synthetic_folder(root / "val", num_classes=3, images_per_class=2, min_side=24, max_side=40, seed=1)
    return root


def test_trains_evaluates_and_writes(data, tmp_path):
    history = main(["--data", str(data), "--epochs", "2", "--output", str(tmp_path), *TINY])
    assert [row["epoch"] for row in history] == [0, 1]
    assert all(row["val_samples"] == 6 for row in history)  # train/ and val/ were split, each val sample once
    assert all(0 <= row["val_top1"] <= 100 and row["val_top5"] == 100 for row in history)  # 3 classes: top-5 = all
    assert history[0]["lr"] > history[1]["lr"] > 0  # the default recipe's cosine decay, per step
    assert json.loads((tmp_path / "metrics.json").read_text()) == history
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,lr,train_loss")
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert set(ckpt) >= {"model", "optimizer", "schedule", "loaders", "step", "args", "history"}
    assert ckpt["loaders"][0]["epoch"] == 2 and ckpt["step"] == 6  # 12 images / batch 4, drop_last, 2 epochs
    assert any(k.startswith("resizer.stem") for k in ckpt["model"])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["adamw", "paper"])
def test_resume_continues_exactly(data, tmp_path, recipe):
    full = main(["--data", str(data), "--epochs", "3", "--output", str(tmp_path / "a"), "--recipe", recipe, *TINY])
    if recipe == "paper":
        assert [row["lr"] for row in full] == pytest.approx([0.01, 0.01, 0.01 * 0.94])  # x0.94 every 2 epochs
    # stopped after its first epoch (3 steps) of 3: the run's length is part of its schedule (cosine)
    main(["--data", str(data), "--epochs", "3", "--max-steps", "3", "--output", str(tmp_path / "b"), "--recipe", recipe,
          *TINY])
    resumed = main(["--data", str(data), "--epochs", "3", "--output", str(tmp_path / "b"), "--resume",
                    "--recipe", recipe, *TINY])
    for a, b in zip(full, resumed):
        for key in ("train_loss", "val_loss", "val_top1", "lr", "step"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["epoch"], key)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_fixed_baseline_and_warm_start(data, tmp_path):
    main(["--data", str(data), "--epochs", "1", "--resizer", "bilinear", "--output", str(tmp_path / "base"), *TINY])
    base = torch.load(tmp_path / "base" / "checkpoint.pt", weights_only=False)
    assert not any(k.startswith("resizer.") for k in base["model"])  # the fixed resize has no parameters
    assert base["args"]["resizer"] == "bilinear"

    main(["--data", str(data), "--epochs", "1", "--init-backbone", str(tmp_path / "base" / "checkpoint.pt"),
          "--max-steps", "0", "--output", str(tmp_path / "ft"), *TINY])
    ft = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=False)
    for key, value in base["model"].items():
        torch.testing.assert_close(ft["model"][key], value)  # no step taken: exactly the warm start
    assert ft["args"]["init_backbone"].endswith("checkpoint.pt")

    main(["--data", str(data), "--epochs", "1", "--init-resizer", str(tmp_path / "ft" / "checkpoint.pt"),
          "--backbone", "mobilenet_v2", "--max-steps", "0", "--output", str(tmp_path / "tr"),
          *[a for a in TINY if a != "resnet18" and a != "--backbone"]])
    tr = torch.load(tmp_path / "tr" / "checkpoint.pt", weights_only=False)
    for key in (k for k in ft["model"] if k.startswith("resizer.")):
        torch.testing.assert_close(tr["model"][key], ft["model"][key])


def test_bf16_autocast_on_cpu(data, tmp_path):
    history = main(["--data", str(data), "--epochs", "1", "--precision", "bf16", "--output", str(tmp_path), *TINY])
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))


def test_bad_arguments(data, tmp_path):
    with pytest.raises(ValueError, match="needs a learned resizer"):
        main(["--data", str(data), "--resizer", "bicubic", "--init-resizer", "x.pt", "--output", str(tmp_path), *TINY])
    with pytest.raises(SystemExit):
        main(["--data", str(data), "--resizer", "lanczos", *TINY])


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "dali_resizer.train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--init-backbone" in out.stdout and "--resizer" in out.stdout


@pytest.mark.slow
def test_torchrun_ddp_two_processes(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "dali_resizer.train", "--data", str(data), "--epochs", "1", "--output", str(tmp_path), *TINY]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert history[0]["val_samples"] == 6  # the two ranks' halves add up to the validation set, once
    assert history[0]["step"] == 1  # 12 images over 2 ranks, batch 4, drop_last: 1 step each
    assert not list(Path(tmp_path).glob("*.tmp"))


@pytest.mark.slow
def test_torchrun_resumes_mid_epoch_in_a_world_of_another_size(data, tmp_path):
    """2 processes stop inside epoch 0 (--max-steps 1); 3 processes resume: the rest of the epoch is
    split among them, the schedule moves to the same fraction of training in the new world's steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(nproc: int, *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={29530 + nproc}", "-m", "dali_resizer.train", "--data", str(data), "--epochs", "2",
               "--output", str(tmp_path), *LOUD, "--batch-size", "2", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    run(2, "--max-steps", "1")
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert len(ckpt["loaders"]) == 2 and ckpt["step"] == 1 and ckpt["loaders"][0]["batches_done"] == 1
    out = run(3, "--resume")
    # 4 of 12 images read: a third of epoch 0, so step 1 of the new world's 2 per epoch (4 per rank, batch 2)
    assert "saved by 2 process(es): the rest of epoch 0 is split among this run's 3" in out.stderr
    assert "schedule continues at step 1 of 2 per epoch" in out.stderr
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert [(row["epoch"], row["step"]) for row in history] == [(0, 2), (1, 4)]  # 8 left over 3 ranks: 1 step
    assert history[-1]["val_samples"] == 6


@pytest.mark.slow
def test_compiled_model_trains(data, tmp_path):
    history = main(["--data", str(data), "--epochs", "1", "--compile", "--max-steps", "3", "--output", str(tmp_path),
                    *TINY])
    assert history[0]["step"] == 3 and torch.isfinite(torch.tensor(history[0]["train_loss"]))


@pytest.mark.slow
def test_resume_mid_epoch_continues_exactly(data, tmp_path):
    """--save-every checkpoints inside an epoch; a run stopped there (--max-steps) and resumed ends with
    the same weights and metrics as one that never stopped."""
    full = main(["--data", str(data), "--epochs", "2", "--output", str(tmp_path / "a"), *TINY])
    main(["--data", str(data), "--epochs", "2", "--save-every", "1", "--max-steps", "4",
          "--output", str(tmp_path / "b"), *TINY])
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 4 and ckpt["loaders"][0]["epoch"] == 1 and ckpt["loaders"][0]["batches_done"] == 1
    resumed = main(["--data", str(data), "--epochs", "2", "--resume", "--output", str(tmp_path / "b"), *TINY])
    assert resumed[-1]["step"] == full[-1]["step"] == 6
    for key in ("train_loss", "train_top1", "val_loss", "val_top1"):
        assert resumed[-1][key] == pytest.approx(full[-1][key], rel=1e-5, abs=1e-6), key
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_memory_efficient_resizer_trains(data, tmp_path):
    """The flag reaches the module and a run trains with it (its equality with the plain module is
    tested in test_resizer_memory_efficient.py: here, a 16-pixel ResNet-18 whose last BatchNorms see
    four values per channel would amplify float rounding into different trajectories)."""
    from dali_resizer.train import build_model, parse_args

    assert build_model(parse_args(["--data", "x", "--memory-efficient"]), 3).resizer.memory_efficient
    assert not build_model(parse_args(["--data", "x"]), 3).resizer.memory_efficient
    history = main(["--data", str(data), "--epochs", "1", "--output", str(tmp_path), "--memory-efficient", *TINY])
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))


@pytest.mark.slow
def test_cpu_kernels_flag_reaches_the_resizer(data, tmp_path):
    """--cpu-kernels builds the resizer with the C++ stem kernel and a run trains with it (its equality
    with the plain module is tested in test_resizer_cpu_kernels.py)."""
    from dali_resizer.train import build_model, parse_args

    assert build_model(parse_args(["--data", "x", "--cpu-kernels"]), 3).resizer.cpu_kernels
    assert not build_model(parse_args(["--data", "x"]), 3).resizer.cpu_kernels
    history = main(["--data", str(data), "--epochs", "1", "--output", str(tmp_path), "--cpu-kernels", *TINY])
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))


def test_recipes_fill_what_is_left_unset():
    from dali_resizer.train import TrainConfig, resolve_recipe

    adamw = resolve_recipe(TrainConfig())
    assert (adamw.optimizer, adamw.lr, adamw.weight_decay, adamw.schedule, adamw.warmup_epochs) == \
        ("adamw", 1e-3, 0.05, "cosine", 1.0)
    assert adamw.decay_norm_and_bias is False
    paper = resolve_recipe(TrainConfig(recipe="paper"))
    assert (paper.optimizer, paper.lr, paper.weight_decay, paper.schedule, paper.warmup_epochs) == \
        ("sgd", 0.05, 1e-4, "step", 0.0)
    assert paper.decay_norm_and_bias is True
    assert resolve_recipe(TrainConfig(recipe="paper", init_backbone="b.pt")).lr == 0.005  # the paper's fine-tuning
    mixed = resolve_recipe(TrainConfig(recipe="paper", lr=0.2, optimizer="adamw", warmup_epochs=0.5))
    assert (mixed.optimizer, mixed.lr, mixed.warmup_epochs, mixed.schedule) == ("adamw", 0.2, 0.5, "step")
    for bad, match in (({"recipe": "lamb"}, "recipe must be one of"), ({"optimizer": "rmsprop"}, "optimizer must be"),
                       ({"schedule": "poly"}, "schedule must be"), ({"resizer_lr": 0.0}, "resizer_lr must be positive"),
                       ({"weight_decay": -1.0}, "weight_decay")):
        with pytest.raises(ValueError, match=match):
            resolve_recipe(TrainConfig(**bad))


@pytest.mark.parametrize("recipe", ["adamw", "paper"])
def test_optimizer_groups(recipe):
    from dali_resizer.train import TrainConfig, build_model, make_optimizer, resolve_recipe

    cfg = resolve_recipe(TrainConfig(recipe=recipe, backbone="resnet18", size=16, resizer_lr=0.5))
    model = build_model(cfg, 3)
    optimizer = make_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW if recipe == "adamw" else torch.optim.SGD)
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # every parameter, once
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert {lr[id(p)] for p in model.resizer.parameters()} == {0.5}
    assert {lr[id(p)] for p in model.backbone.parameters()} == {cfg.lr}
    bn, conv = model.resizer.stem[4].weight, model.resizer.stem[0].weight
    assert decay[id(conv)] == cfg.weight_decay
    assert decay[id(bn)] == (cfg.weight_decay if recipe == "paper" else 0.0)
    assert decay[id(model.backbone.fc.bias)] == (cfg.weight_decay if recipe == "paper" else 0.0)


def schedule_lrs(cfg, steps_per_epoch: int) -> list[float]:
    """The lr of each of a run's steps under ``make_schedule``."""
    from dali_resizer.train import make_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_schedule_warms_up_then_decays():
    from dali_resizer.train import TrainConfig, resolve_recipe

    lrs = schedule_lrs(resolve_recipe(TrainConfig(epochs=4, lr=1.0)), 10)  # adamw: 1 warm-up epoch, then cosine
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])  # linear warm-up to the peak
    assert lrs[10] == pytest.approx(1.0) and lrs[25] == pytest.approx(0.5, abs=0.06)
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01

    lrs = schedule_lrs(resolve_recipe(TrainConfig(recipe="paper", epochs=6, lr=1.0, warmup_epochs=1.0)), 2)
    assert lrs == pytest.approx([0.5, 1, 1, 1, 0.94, 0.94, 0.94, 0.94, 0.94**2, 0.94**2, 0.94**2, 0.94**2])


def test_muller_resizer_trains_through_the_cli(data, tmp_path):
    history = main(["--data", str(data), "--epochs", "1", "--resizer", "muller", "--output", str(tmp_path), *TINY])
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    assert sorted(k for k in state if k.startswith("resizer.")) == ["resizer.bias", "resizer.weight"]
    assert state["resizer.weight"].abs().sum() > 0  # it left its zero start


def test_recipe_options_reach_the_run(data, tmp_path):
    main(["--data", str(data), "--epochs", "1", "--recipe", "paper", "--resizer-lr", "0.2", "--warmup-epochs", "0.5",
          "--no-decay-norm-and-bias", "--output", str(tmp_path), *TINY])
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    args = ckpt["args"]
    assert (args["recipe"], args["optimizer"], args["lr"], args["resizer_lr"], args["warmup_epochs"]) == \
        ("paper", "sgd", 0.01, 0.2, 0.5)
    assert args["decay_norm_and_bias"] is False
    groups = ckpt["optimizer"]["param_groups"]
    assert {g["name"]: g["initial_lr"] for g in groups} == {"backbone": 0.01, "resizer": 0.2}


def test_batch_sums_count_real_samples_only():
    from dali_resizer.samples import PAD_LABEL
    from dali_resizer.train import batch_sums

    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, PAD_LABEL, PAD_LABEL])  # padding rows would "match" nothing, and count nothing
    criterion = torch.nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.1)  # (as the training loop runs it)
    loss_sum = criterion(logits, labels)
    sums = batch_sums(loss_sum, logits, labels)
    assert sums.dtype == torch.float64 and sums.tolist()[0::2] == [2.0, 1.0]  # real rows, correct
    mean = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels)  # torch's mean over the real rows
    assert float(loss_sum / sums[0]) == pytest.approx(float(mean))
    assert batch_sums(criterion(logits, torch.full((4,), PAD_LABEL)), logits, torch.full((4,), PAD_LABEL)).tolist() \
        == [0.0, 0.0, 0.0]  # only padding: a zero loss (not NaN), nothing counted


def test_an_output_that_holds_a_run_needs_resume_or_overwrite(data, tmp_path, capsys):
    from dali_resizer.train import cli

    main(["--data", str(data), "--epochs", "1", "--max-steps", "1", "--output", str(tmp_path), *TINY])
    before = (tmp_path / "metrics.csv").read_text()
    assert cli(["--data", str(data), "--epochs", "1", "--output", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (tmp_path / "metrics.csv").read_text() == before  # untouched
    assert cli(["--data", str(data), "--output", str(tmp_path), "--resume", "--overwrite", *TINY]) == 2
    assert cli(["--data", str(data), "--output", str(tmp_path / "new"), "--resume", *TINY]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err
    history = main(["--data", str(data), "--epochs", "1", "--output", str(tmp_path), "--overwrite", *TINY])
    assert len(history) == 1 and len((tmp_path / "metrics.csv").read_text().splitlines()) == 2  # a new run


def test_resume_and_missing_validation_say_so(tmp_path, capsys):
    folder = make_synthetic_folder(tmp_path / "data", num_classes=2, images_per_class=4, min_side=24, max_side=32)
    args = ["--data", str(folder), "--epochs", "2", "--output", str(tmp_path / "run"), *LOUD]
    main([*args, "--max-steps", "1"])
    first = capsys.readouterr().err
    assert "no validation data" in first
    main([*args, "--resume"])
    said = capsys.readouterr().err
    assert f"resumed from {(tmp_path / 'run' / 'checkpoint.pt').resolve()} at epoch 0, step 1 (batch 1 of 2" in said


def test_a_batch_larger_than_the_training_set_is_an_error(data, tmp_path):
    with pytest.raises(ValueError, match="--batch-size 64 is larger than the .* training sample"):
        main(["--data", str(data), "--output", str(tmp_path), *TINY, "--batch-size", "64"])


def test_on_error_skip_trains_past_a_bad_file_and_counts_it(tmp_path, capsys):
    folder = make_synthetic_folder(tmp_path / "data", num_classes=2, images_per_class=6, min_side=24, max_side=32)
    bad = sorted(folder.glob("*/*"))[0]
    bad.write_bytes(b"<html>not an image</html>")
    args = ["--data", str(folder), "--epochs", "2", "--output", str(tmp_path / "run"), *LOUD]
    with pytest.raises(ValueError, match="HTML/XML text"):
        main(args)
    with pytest.warns(UserWarning, match="skipped 1 bad sample"):
        history = main([*args, "--on-error", "skip", "--overwrite"])
    assert [row["train_skipped"] for row in history] == [1, 1]
    assert f"1 bad training sample(s) skipped: {bad}" in capsys.readouterr().err


def test_resume_with_another_batch_size_is_refused(data, tmp_path, capsys):
    from dali_resizer.train import cli

    main(["--data", str(data), "--epochs", "2", "--max-steps", "1", "--output", str(tmp_path), *TINY])
    assert cli(["--data", str(data), "--epochs", "2", "--output", str(tmp_path), "--resume", *TINY,
                "--batch-size", "2"]) == 2
    assert "--batch-size 2: the checkpoint was trained with --batch-size 4 per process" in capsys.readouterr().err


RECIPE = ["--auto-augment", "ta_wide", "--random-erase", "0.25", "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0",
          "--interpolation", "bicubic"]  # (torchvision's reference recipe's flags)


def test_the_reference_recipes_flags_train_and_resume_exactly(data, tmp_path):
    """The augmentations in the graph and MixUp/CutMix on the batch, by the reference script's flag names:
    a run stopped mid-epoch and resumed ends with the weights and metrics of one that never stopped, and
    the loss is the soft targets' (MixUp/CutMix change it from the plain run's)."""
    plain = main(["--data", str(data), "--epochs", "2", "--output", str(tmp_path / "p"), *TINY])
    full = main(["--data", str(data), "--epochs", "2", "--output", str(tmp_path / "a"), *RECIPE, *TINY])
    main(["--data", str(data), "--epochs", "2", "--save-every", "1", "--max-steps", "4",
          "--output", str(tmp_path / "b"), *RECIPE, *TINY])
    resumed = main(["--data", str(data), "--epochs", "2", "--resume", "--output", str(tmp_path / "b"), *RECIPE, *TINY])
    for key in ("train_loss", "train_top1", "val_loss", "val_top1"):
        assert resumed[-1][key] == pytest.approx(full[-1][key], rel=1e-5, abs=1e-6), key
    assert full[0]["train_loss"] != pytest.approx(plain[0]["train_loss"], rel=1e-3)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["args"]["auto_augment"] == "ta_wide" and a["args"]["mixup_alpha"] == 0.2
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)


def test_the_reference_crop_size_flags_size_what_the_loaders_deliver(data, tmp_path, capsys):
    """``--train-crop-size``, ``--val-crop-size`` and ``--val-resize-size`` size the loaders' output (the
    resizer's input): a run with crops of 32 from a resize to 40 is the run of ``--input-size 32
    --crop-ratio 0.8``, metric for metric; another training crop changes the training figures."""
    tiny = [a for a in LOUD if a not in ("--input-size", "32")]
    run = lambda name, *flags: main(["--data", str(data), "--epochs", "1", "--output", str(tmp_path / name),  # noqa: E731
                                     *tiny, *flags])
    by_ratio = run("a", "--input-size", "32", "--crop-ratio", "0.8")
    by_sizes = run("b", "--input-size", "48", "--train-crop-size", "32", "--val-crop-size", "32",
                   "--val-resize-size", "40")
    for key in ("train_loss", "train_top1", "val_loss", "val_top1"):
        assert by_sizes[-1][key] == pytest.approx(by_ratio[-1][key], rel=1e-6), key
    capsys.readouterr()
    other = run("c", "--input-size", "32", "--train-crop-size", "24")
    assert "resizer 24 (evaluation 32)->16" in capsys.readouterr().err
    assert other[-1]["train_loss"] != pytest.approx(by_ratio[-1]["train_loss"], rel=1e-4)
    with pytest.raises(ValueError, match="pass --val-resize-size or --crop-ratio, not both"):
        run("d", "--val-resize-size", "40", "--crop-ratio", "0.8")
    with pytest.raises(ValueError, match="--val-resize-size 20 must be an int of at least the evaluation crop, 32"):
        run("e", "--val-crop-size", "32", "--val-resize-size", "20")
