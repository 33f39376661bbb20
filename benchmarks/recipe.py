"""Why a recipe does or does not train the learned resizer: gradient and update sizes per module, and
validation top-1 per epoch, for a list of recipe variants on the generated "fine" task.

    python benchmarks/recipe.py                      # every variant, ~15 min on 2 cores
    python benchmarks/recipe.py --variants paper adamw paper-resizer-lr-x100 --epochs 2

The task is ``benchmarks/accuracy.py``'s generated set with the class carried by the fine grating alone
(2 classes, chance 50%): a fixed 4x downscale removes the cue, a learned resizer can keep it. The data
are held in memory as the loader would deliver them (ImageNet-normalized, random horizontal flips),
so that each variant isolates the optimisation. Every variant builds its model, optimizer and
schedule with ``dali_resizer.train``'s own ``build_model``, ``make_optimizer`` and ``make_schedule``.

For each module group it prints, over the first ``--probe-steps`` steps, the median gradient norm
and the median relative update ``|w_t+1 - w_t| / |w_t|`` (the step's size against the weights' size,
what decides whether a layer moves), then validation top-1 after each epoch and the last epoch's
training loss. Results go to ``--output`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.accuracy import detail_image  # noqa: E402
from dali_resizer.samples import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from dali_resizer.train import TrainConfig, build_model, make_optimizer, make_schedule, resolve_recipe  # noqa: E402

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255  # what the loader normalizes with
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255

# name: (TrainConfig overrides, data/model options). "paper" and "adamw" are the two recipes as shipped.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "paper": ({"recipe": "paper"}, {}),
    "paper-lr0.01": ({"recipe": "paper", "lr": 0.01}, {}),
    "paper-lr0.2": ({"recipe": "paper", "lr": 0.2}, {}),
    "paper-lr0.002": ({"recipe": "paper", "lr": 0.002}, {}),
    "paper-lr0.0005": ({"recipe": "paper", "lr": 0.0005}, {}),
    "paper-warmup": ({"recipe": "paper", "warmup_epochs": 1.0}, {}),
    "paper-no-decay-norm-bias": ({"recipe": "paper", "decay_norm_and_bias": False}, {}),
    "paper-zero-init": ({"recipe": "paper", "zero_init": True}, {}),
    "paper-inputs-0-1": ({"recipe": "paper"}, {"inputs": "unit"}),
    "paper-small-input-stem": ({"recipe": "paper"}, {"stem": "small"}),
    "paper-resizer-lr-x10": ({"recipe": "paper", "resizer_lr": 0.5}, {}),
    "paper-resizer-lr-x100": ({"recipe": "paper", "resizer_lr": 5.0}, {}),
    "paper-cosine-warmup-no-decay-norm-bias": (
        {"recipe": "paper", "schedule": "cosine", "warmup_epochs": 1.0, "decay_norm_and_bias": False}, {}),
    "adamw": ({"recipe": "adamw"}, {}),
    "adamw-lr3e-4": ({"recipe": "adamw", "lr": 3e-4}, {}),
    "adamw-lr3e-3": ({"recipe": "adamw", "lr": 3e-3}, {}),
    "adamw-no-warmup": ({"recipe": "adamw", "warmup_epochs": 0.0}, {}),
    "adamw-zero-init": ({"recipe": "adamw", "zero_init": True}, {}),
    "bilinear-paper": ({"recipe": "paper", "resizer": "bilinear"}, {}),
    "bilinear-adamw": ({"recipe": "adamw", "resizer": "bilinear"}, {}),
    "bilinear-paper-lr0.002": ({"recipe": "paper", "resizer": "bilinear", "lr": 0.002}, {}),
    "bilinear-adamw-lr3e-4": ({"recipe": "adamw", "resizer": "bilinear", "lr": 3e-4}, {}),
    "bilinear-adamw-lr3e-3": ({"recipe": "adamw", "resizer": "bilinear", "lr": 3e-3}, {}),
    "muller-adamw": ({"recipe": "adamw", "resizer": "muller"}, {}),
}


def make_data(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = np.arange(n) % 2
    images = np.stack([detail_image(np.random.default_rng([seed, int(y), i]), size, int(y), task="fine")
                       for i, y in enumerate(labels)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long()


def prepare(images: torch.Tensor, inputs: str) -> torch.Tensor:
    x = images.float()
    x = (x - MEAN) / STD if inputs == "imagenet" else x / 255
    return x.contiguous(memory_format=torch.channels_last)


def small_input_stem(model: nn.Sequential) -> None:
    """The ResNet stem for tiny inputs (as for CIFAR): a 3x3 stride-1 convolution and no max-pool."""
    bb = model.backbone
    bb.conv1 = nn.Conv2d(3, bb.conv1.out_channels, 3, padding=1, bias=False)
    bb.maxpool = nn.Identity()


def groups(model: nn.Sequential) -> dict[str, list[nn.Parameter]]:
    out: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        part, module = name.split(".")[:2]
        if part == "backbone" and module in ("conv1", "bn1"):
            module = "stem"
        key = f"{part}.{module}"
        out.setdefault(key, []).append(p)
    return out


def norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return 100 * correct / len(x)


def run_variant(name: str, a, data) -> dict:
    overrides, opts = VARIANTS[name]
    (xtr, ytr), (xva, yva) = data
    cfg = replace(TrainConfig(), backbone=a.backbone, size=a.size, input_size=a.input_size, epochs=a.epochs,
                  batch_size=a.batch_size, seed=a.seed, **overrides)
    cfg = resolve_recipe(cfg)
    torch.manual_seed(a.seed)
    model = build_model(cfg, num_classes=2)
    if opts.get("stem") == "small":
        small_input_stem(model)
    model = model.to(memory_format=torch.channels_last)
    steps = len(xtr) // a.batch_size
    optimizer = make_optimizer(model, cfg)
    schedule = make_schedule(optimizer, cfg, steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    xtr_n, xva_n = prepare(xtr, opts.get("inputs", "imagenet")), prepare(xva, opts.get("inputs", "imagenet"))
    parts = groups(model)
    probe: dict[str, dict[str, list[float]]] = {k: {"grad": [], "update": []} for k in parts}
    g = torch.Generator().manual_seed(a.seed)
    curve, step, t0 = [], 0, time.perf_counter()
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=g)
        loss_sum = correct = 0.0
        for i in range(steps):
            idx = order[i * a.batch_size:(i + 1) * a.batch_size]
            x, y = xtr_n[idx], ytr[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            logits = model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step < a.probe_steps:
                before = {k: [p.detach().clone() for p in ps] for k, ps in parts.items()}
                for k, ps in parts.items():
                    probe[k]["grad"].append(norm(p.grad for p in ps if p.grad is not None))
            optimizer.step()
            schedule.step()
            if step < a.probe_steps:
                for k, ps in parts.items():
                    delta = norm(p.detach() - b for p, b in zip(ps, before[k]))
                    probe[k]["update"].append(delta / max(norm(before[k]), 1e-12))
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            correct += float((logits.argmax(1) == y).sum())
        curve.append({"epoch": epoch, "train_loss": loss_sum / (steps * a.batch_size),
                      "train_top1": 100 * correct / (steps * a.batch_size),
                      "val_top1": evaluate(model, xva_n, yva, 128)})
        print(f"  {name} epoch {epoch}: train loss {curve[-1]['train_loss']:.3f} "
              f"val top-1 {curve[-1]['val_top1']:.1f}%", file=sys.stderr, flush=True)
    summary = {k: {"grad": statistics.median(v["grad"]), "update": statistics.median(v["update"])}
               for k, v in probe.items() if v["grad"]}
    return {"config": {k: getattr(cfg, k) for k in ("resizer", "optimizer", "lr", "resizer_lr", "weight_decay",
                                                     "decay_norm_and_bias", "schedule", "warmup_epochs", "zero_init")}
            | opts, "probe": summary, "curve": curve, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                   help=f"default: all of {', '.join(VARIANTS)}")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=400)
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--size", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--probe-steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="results/recipe.json")
    a = p.parse_args(argv)
    data = (make_data(a.train_images, a.input_size, a.seed), make_data(a.val_images, a.input_size, a.seed + 1000))
    results = {"args": vars(a), "torch": torch.__version__, "variants": {}}
    for name in a.variants:
        results["variants"][name] = run_variant(name, a, data)
    keys = ["resizer.stem", "resizer.head", "backbone.stem", "backbone.layer4", "backbone.fc"]
    print(f"\n{a.backbone}, fine task {a.input_size} -> {a.size}, {a.train_images} training images, {a.epochs} epochs; "
          f"median over the first {a.probe_steps} steps: relative update |dw|/|w| (gradient norm)")
    print(f"{'variant':42s} " + " ".join(f"{k:>22s}" for k in keys) + "   val top-1 by epoch   last train loss")
    for name, r in results["variants"].items():
        cells = [f"{r['probe'][k]['update']:9.1e} ({r['probe'][k]['grad']:8.1e})" if k in r["probe"] else f"{'-':>22s}"
                 for k in keys]
        curve = " ".join(f"{c['val_top1']:5.1f}" for c in r["curve"])
        print(f"{name:42s} " + " ".join(cells) + f"   {curve}   {r['curve'][-1]['train_loss']:.3f}")
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
