"""Train a torchvision classifier behind a learned (or fixed) resizer, fed by DALILoader.

    python -m dali_resizer.train --data imagenet --backbone resnet50 --resizer learned --epochs 30
    torchrun --nproc_per_node=8 -m dali_resizer.train --data imagenet --backbone resnet50

Two recipes (``--recipe``), each a set of defaults that the single options override:

- ``adamw`` (the default): AdamW, lr 1e-3, weight decay 0.05 on convolution and linear weights only,
  a one-epoch linear warm-up, then a cosine decay to zero, label smoothing 0.1. It trains the
  learned resizer where the paper's recipe does not (``benchmarks/recipe.py``).
- ``paper``: Talebi & Milanfar (ICCV 2021): SGD with momentum 0.9, lr 0.05 from scratch or 0.005 when
  fine-tuning (``--init-backbone``), decayed by 0.94 every 2 epochs, weight decay 1e-4 on every
  parameter, label smoothing 0.1. Its lr was set for ImageNet-scale batches: at batch 32 on a small
  set it trains neither the resizer nor the backbone (``benchmarks/recipe.py`` measures why), so
  scale it to the batch.

``--resizer learned`` is Talebi & Milanfar's CNN, ``--resizer muller`` the 4-parameter MULLER resizer
(Tu, Talebi & Milanfar, ICCV 2023). With ``--resizer bilinear|bicubic`` the same data path and backbone
are trained with a fixed resize in the resizer's place: the baseline to compare against.

``--data`` is an image folder or WebDataset shards; a folder holding ``train/`` and ``val/`` is split
that way, otherwise pass ``--val-data``. Each epoch writes ``checkpoint.pt`` (model, optimizer,
schedule, loader epoch, arguments) and appends to ``metrics.csv`` / ``metrics.json`` in ``--output``;
``--resume`` continues from the checkpoint there; a folder that holds a run is refused without
``--resume`` or ``--overwrite``. ``--on-error skip`` skips bad samples, counts them in the metrics and
names them at the end. Under torchrun the model runs under DDP (gloo on
the CPU, nccl on GPUs), the loader shards by rank, and only rank 0 writes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dali_resizer.loader import DALILoader, resolve_device
from dali_resizer.mix import MixUpCutMix, soft_target_cross_entropy
from dali_resizer.muller import MullerResizer
from dali_resizer.progress import ProgressBar
from dali_resizer.resizer import FixedResizer, LearnableResizer
from dali_resizer.samples import real_mask
from dali_resizer.spec import AUTO_AUGMENT_POLICIES, INTERPOLATIONS

__all__ = ["RECIPES", "TrainConfig", "build_model", "main", "make_optimizer", "make_schedule", "resolve_recipe",
           "train"]

RESIZERS = ("learned", "muller", "bilinear", "bicubic")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step")

# Each recipe fills the optimisation options left unset (None) in TrainConfig.
RECIPES: dict[str, dict] = {
    "adamw": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "decay_norm_and_bias": False,
              "schedule": "cosine", "warmup_epochs": 1.0},
    "paper": {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-4, "decay_norm_and_bias": True,
              "schedule": "step", "warmup_epochs": 0.0},
}
PAPER_FINETUNE_LR = 0.005  # the paper's lr with a warm-started backbone (--init-backbone)


@dataclass
class TrainConfig:
    data: str | None = None
    val_data: str | None = None
    output: str = "runs/train"
    resizer: str = "learned"
    size: int = 224
    input_size: int = 448
    antialias: bool | None = None  # None: each module's default (fixed: True; learned, muller: False)
    num_filters: int = 16
    num_res_blocks: int = 1
    zero_init: bool = False
    memory_efficient: bool = False
    cpu_kernels: bool = False
    backbone: str = "resnet50"
    num_classes: int | None = None
    epochs: int = 10
    batch_size: int = 32
    random_area: tuple[float, float] = (0.08, 1.0)
    random_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_ratio: float | None = None  # evaluation center-crop ratio (default 0.875, or from val_resize_size)
    train_crop_size: int | None = None  # the loader's training crop (default: input_size), as --train-crop-size
    val_resize_size: int | None = None  # evaluation: the shorter side before the crop (default: crop / crop_ratio)
    val_crop_size: int | None = None  # the loader's evaluation crop (default: input_size)
    interpolation: str = "bilinear"  # the loader's resizes (torchvision's reference --interpolation)
    auto_augment: str | None = None  # ta_wide | ra | imagenet (the reference's --auto-augment)
    ra_magnitude: int = 9
    random_erase: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_switch_prob: float = 0.5
    roi_decode: bool | None = None  # (the loader's default: windows on the CPU, whole images on a GPU)
    cache: bool = True  # s3:// shards through the node-local shard cache
    cache_limit: str | None = None  # its byte limit (default: DALI_RESIZER_CACHE_LIMIT, else 80% of the free disk)
    recipe: str = "adamw"
    optimizer: str | None = None
    lr: float | None = None
    resizer_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    decay_norm_and_bias: bool | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    lr_decay: float = 0.94
    decay_every: int = 2
    label_smoothing: float = 0.1
    init_backbone: str | None = None
    init_resizer: str | None = None
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    resume: bool = False
    overwrite: bool = False
    on_error: str = "raise"
    max_steps: int | None = None
    seed: int = 0
    num_threads: int | None = None
    device: str | None = None
    log_every: int = 10
    save_every: int | None = None
    quiet: bool = False


def resolve_recipe(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every optimisation option left ``None`` taken from ``cfg.recipe``."""
    if cfg.recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {cfg.recipe!r}")
    values = {k: v for k, v in RECIPES[cfg.recipe].items() if getattr(cfg, k) is None}
    if "lr" in values and cfg.recipe == "paper" and cfg.init_backbone:
        values["lr"] = PAPER_FINETUNE_LR
    cfg = TrainConfig(**{**asdict(cfg), **values})
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    for name in ("lr", "resizer_lr"):
        if getattr(cfg, name) is not None and not getattr(cfg, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)!r}")
    if cfg.weight_decay < 0 or cfg.warmup_epochs < 0:
        raise ValueError(f"weight_decay and warmup_epochs must be >= 0, got {cfg.weight_decay!r} and "
                         f"{cfg.warmup_epochs!r}")
    return cfg


def make_optimizer(model: nn.Sequential, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of a resolved ``cfg`` (see :func:`resolve_recipe`).

    Parameter groups, in this order: the backbone's decayed weights, its BatchNorm weights and biases,
    then the same two for the resizer. Without ``decay_norm_and_bias`` the tensors of one or no
    dimension (BatchNorm's affine terms, biases, MULLER's scalars) get no weight decay. The resizer's
    groups use ``resizer_lr`` when it is set.
    """
    groups = []
    for part, lr in (("backbone", cfg.lr), ("resizer", cfg.resizer_lr or cfg.lr)):
        params = [p for p in getattr(model, part).parameters() if p.requires_grad] if hasattr(model, part) else []
        if cfg.decay_norm_and_bias:
            split = [(params, cfg.weight_decay)]
        else:
            split = [([p for p in params if p.ndim > 1], cfg.weight_decay), ([p for p in params if p.ndim <= 1], 0.0)]
        groups += [{"params": ps, "lr": lr, "weight_decay": wd, "name": part} for ps, wd in split if ps]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A per-step ``LambdaLR``: a linear warm-up over ``warmup_epochs``, then the recipe's decay
    (``cosine`` to zero at the last step, or ``step``: ``lr_decay`` every ``decay_every`` epochs)."""
    steps_per_epoch = max(steps_per_epoch, 1)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    total = cfg.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))
        return cfg.lr_decay ** ((step // steps_per_epoch) // cfg.decay_every)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Sequential:
    """``Sequential(resizer=..., backbone=...)``: the resizer is the model's first stage."""
    import torchvision

    antialias = {} if cfg.antialias is None else {"antialias": cfg.antialias}
    if cfg.resizer == "learned":
        resizer: nn.Module = LearnableResizer(cfg.size, num_filters=cfg.num_filters, num_res_blocks=cfg.num_res_blocks,
                                              zero_init=cfg.zero_init, memory_efficient=cfg.memory_efficient,
                                              cpu_kernels=cfg.cpu_kernels, **antialias)
    elif cfg.resizer == "muller":
        resizer = MullerResizer(cfg.size, **antialias)
    else:
        resizer = FixedResizer(cfg.size, interpolation=cfg.resizer, **antialias)
    backbone = torchvision.models.get_model(cfg.backbone, weights=None, num_classes=num_classes)
    return nn.Sequential(OrderedDict(resizer=resizer, backbone=backbone))


def _load_part(model: nn.Sequential, path: str, part: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    prefix = f"{part}."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        prefixes = sorted({k.split(".")[0] for k in state})
        raise ValueError(f"{path}: holds no '{part}' weights (keys start with {prefixes})")
    getattr(model, part).load_state_dict(sub)


def _split_data(cfg: TrainConfig) -> tuple[str, str | None]:
    if cfg.data is None:
        raise ValueError("--data is required")
    root = Path(cfg.data)
    if cfg.val_data is None and (root / "train").is_dir() and (root / "val").is_dir():
        return str(root / "train"), str(root / "val")
    return cfg.data, cfg.val_data


def _distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size), initialising the process group under torchrun: NCCL bound to this process's
    GPU (``device_id``) when it trains on one, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _all_min(value: int, device: torch.device) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[float]:
    k = min(max(ks), logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels[:, None]
    return [float(hit[:, : min(kk, k)].any(dim=1).sum()) for kk in ks]


def batch_sums(loss_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(real samples, their summed loss, their correct top-1)`` of a training batch, float64 on the
    batch's device (read nothing back: no host sync); padding rows (``PAD_LABEL``) count nowhere, and
    ``loss_sum`` is the loss summed over the real rows (``reduction="sum"``, ``ignore_index``)."""
    mask = real_mask(labels)
    correct = ((logits.argmax(1) == labels) & mask).sum()
    return torch.stack([mask.sum(), loss_sum.detach(), correct]).to(torch.float64)


def evaluate(model: nn.Module, loader: DALILoader, cfg: TrainConfig, device: torch.device) -> dict:
    """Loss, top-1 and top-5 over the whole validation set, each sample counted once across ranks."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    loss = c1 = c5 = n = 0.0
    with torch.inference_mode(), torch.autocast(device.type, dtype=PRECISIONS[cfg.precision],
                                                enabled=PRECISIONS[cfg.precision] is not None):
        for images, labels in loader:
            logits = model(images).float()
            loss += float(criterion(logits, labels))
            a, b = _topk_correct(logits, labels)  # padding (PAD_LABEL) never matches, and the loss ignores it
            c1, c5, n = c1 + a, c5 + b, n + float(real_mask(labels).sum())
    loss, c1, c5, n = _all_sum([loss, c1, c5, n], device)
    return {"val_loss": loss / max(n, 1), "val_top1": 100 * c1 / max(n, 1), "val_top5": 100 * c5 / max(n, 1),
            "val_samples": int(n)}


def loader_sizes(cfg: TrainConfig) -> tuple[int, int, float]:
    """The loaders' sizes: the training crop, the evaluation crop and its ratio to the resized shorter side.

    The loaders deliver the resizer's input, so the reference script's ``--train-crop-size``,
    ``--val-crop-size`` and ``--val-resize-size`` size what they deliver (the resizer then maps it to
    ``--size``, the backbone's input), each defaulting to ``--input-size`` and ``--crop-ratio`` (0.875).
    """
    train_crop = cfg.train_crop_size or cfg.input_size
    val_crop = cfg.val_crop_size or cfg.input_size
    for name, value in (("train_crop_size", train_crop), ("val_crop_size", val_crop)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if cfg.val_resize_size is None:
        return train_crop, val_crop, 0.875 if cfg.crop_ratio is None else cfg.crop_ratio
    if cfg.crop_ratio is not None:
        raise ValueError("pass --val-resize-size or --crop-ratio, not both: each sets the evaluation crop's share")
    if not isinstance(cfg.val_resize_size, int) or cfg.val_resize_size < val_crop:
        raise ValueError(f"--val-resize-size {cfg.val_resize_size} must be an int of at least the evaluation crop, "
                         f"{val_crop} (--val-crop-size, else --input-size)")
    return train_crop, val_crop, val_crop / cfg.val_resize_size


def train(cfg: TrainConfig) -> list[dict]:
    """Runs the training described by ``cfg``; returns the per-epoch metrics."""
    if cfg.resizer not in RESIZERS:
        raise ValueError(f"resizer must be one of {RESIZERS}, got {cfg.resizer!r}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {cfg.precision!r}")
    cfg = resolve_recipe(cfg)
    # this process's device first (LOCAL_RANK's GPU, checked against those visible), then the process group on it
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # (fixed input sizes: the fastest convolution algorithms, once)
    rank, world = _distributed(device)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output)
    _check_output(out, cfg)
    train_dir, val_dir = _split_data(cfg)
    train_crop, val_crop, crop_ratio = loader_sizes(cfg)
    common = dict(batch_size=cfg.batch_size, num_threads=cfg.num_threads, device=device,
                  seed=cfg.seed, shard_id=rank, num_shards=world, on_error=cfg.on_error, roi_decode=cfg.roi_decode,
                  cache=cfg.cache, cache_limit=cfg.cache_limit, interpolation=cfg.interpolation)
    train_loader = DALILoader(train_dir, size=train_crop, shuffle=True, drop_last=True,
                              random_area=tuple(cfg.random_area), random_aspect_ratio=tuple(cfg.random_aspect_ratio),
                              auto_augment=cfg.auto_augment, ra_magnitude=cfg.ra_magnitude,
                              random_erase=cfg.random_erase, **common)
    if len(train_loader) == 0:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {train_loader.samples_per_shard} training "
                         f"sample(s) of each of the {world} process(es) ({len(train_loader.dataset)} in all): not one "
                         f"full batch to train on; use a smaller --batch-size")
    val_loader = DALILoader(val_dir, size=val_crop, train=False, crop_ratio=crop_ratio, **common) if val_dir else None
    num_classes = cfg.num_classes or len(train_loader.classes or [])
    if not num_classes:
        raise ValueError(f"{train_dir}: cannot tell the number of classes; pass --num-classes")
    if num_classes == 1:
        warnings.warn(f"{train_dir}: one class ({(train_loader.classes or ['?'])[0]}): every prediction is right, "
                      f"the loss goes to 0 and top-1 to 100% whatever is learned; point --data at a folder of "
                      f"class folders", stacklevel=2)

    model = build_model(cfg, num_classes)
    if cfg.init_backbone:
        _load_part(model, cfg.init_backbone, "backbone")
    if cfg.init_resizer:
        if cfg.resizer not in ("learned", "muller"):
            raise ValueError("--init-resizer needs a learned resizer (--resizer learned or muller)")
        _load_part(model, cfg.init_resizer, "resizer")
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    steps = _all_min(len(train_loader), device)  # every rank runs the same number of steps per epoch
    optimizer = make_optimizer(model, cfg)
    schedule = make_schedule(optimizer, cfg, steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum")  # (PAD_LABEL ignored)
    # MixUp / CutMix on the delivered batch: soft targets (padding rows never mixed, their targets zero); each
    # batch's draws seeded from (seed, epoch, batch), so a resumed epoch mixes as the uninterrupted one
    mixer = MixUpCutMix(num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, switch_prob=cfg.mixup_switch_prob,
                        label_smoothing=cfg.label_smoothing, seed=cfg.seed) if (
        cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0) else None

    history: list[dict] = []
    start_epoch = step = 0
    partial = None  # running sums of an epoch interrupted mid-way
    if cfg.resume:
        ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        scaler.load_state_dict(ckpt["scaler"])
        saved_batch = ckpt.get("args", {}).get("batch_size", cfg.batch_size)
        if saved_batch != cfg.batch_size:
            raise ValueError(f"--batch-size {cfg.batch_size}: the checkpoint was trained with --batch-size "
                             f"{saved_batch} per process; resume with it")
        states = ckpt["loaders"]
        # Every rank's loader state: in the world that saved them each rank resumes its own part of the
        # epoch exactly; in a world of another size the rest of the epoch is split among this world's ranks.
        train_loader.load_state_dict(states)
        start_epoch, step = states[0]["epoch"], ckpt["step"]
        history, partial = ckpt["history"], ckpt["partial"]
        torch.set_rng_state(ckpt["rng"])
        resumed = (f"resumed from {(out / 'checkpoint.pt').resolve()} at epoch {start_epoch}, step {step}"
                   + (f" (batch {partial[0]} of {steps} in the epoch)" if partial else " (the epoch's start)"))
        if len(states) != world:
            step, partial = _move_to_world(states, len(train_loader.dataset), steps, schedule, partial, world)
            resumed += (f", saved by {len(states)} process(es): the rest of epoch {start_epoch} is split among "
                        f"this run's {world}, and the schedule continues at step {step} of {steps} per epoch")
    else:
        resumed = None
        if rank == 0 and cfg.overwrite:
            for name in ("checkpoint.pt", "metrics.csv", "metrics.json"):
                (out / name).unlink(missing_ok=True)
    device_ids = [device.index] if device.type == "cuda" else None
    ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids) if world > 1 else model
    run_model = torch.compile(ddp_model) if cfg.compile else ddp_model
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: None) if (rank != 0 or cfg.quiet) else (lambda *a: print(*a, file=sys.stderr, flush=True))
    sizes = f"{train_crop}" if train_crop == val_crop else f"{train_crop} (evaluation {val_crop})"
    log(f"{cfg.backbone} + {cfg.resizer} resizer {sizes}->{cfg.size}, {num_classes} classes, "
        f"{len(train_loader.dataset)} train samples, world {world}, device {device}, recipe {cfg.recipe}: "
        f"{cfg.optimizer} lr {cfg.lr}" + (f" (resizer {cfg.resizer_lr})" if cfg.resizer_lr else "")
        + f", {cfg.schedule} schedule, {cfg.warmup_epochs:g} warm-up epoch(s)")
    if resumed:
        log(resumed)
    if val_loader is None:
        log(f"no validation data ({train_dir} has no val/ beside train/, and no --val-data): the metrics hold "
            f"training figures only")

    for epoch in range(start_epoch, cfg.epochs):
        if cfg.max_steps is not None and step >= cfg.max_steps:
            _save(out, cfg, model, optimizer, schedule, scaler, train_loader, step, history, rank, partial=partial)
            break
        if partial is None:
            train_loader.set_epoch(epoch)  # (a resumed epoch continues from the loader's saved state)
        # steps this epoch: the whole epoch's, but for one taken over from a world of another size
        epoch_steps = steps if partial is not None and partial[0] else _all_min(
            min(len(train_loader), steps), device)
        model.train()
        first, *before = partial or (0, 0.0, 0.0, 0.0)
        partial, seen_before = None, before[0]
        # (real samples, loss sum, correct) of this epoch, summed on the device and read at log intervals
        running = torch.tensor(before, dtype=torch.float64, device=device)

        def totals(running=running) -> list[float]:
            return running.tolist()

        t0 = time.perf_counter()
        bar = ProgressBar(epoch_steps, f"epoch {epoch}", unit="step") if rank == 0 and not cfg.quiet else None
        autocast = torch.autocast(device.type, dtype=PRECISIONS[cfg.precision],
                                  enabled=PRECISIONS[cfg.precision] is not None)
        stopped = None  # the running sums when --max-steps ends the run inside this epoch
        lr_used = optimizer.param_groups[0]["lr"]
        for i, (images, labels) in enumerate(train_loader, start=first):
            if i >= epoch_steps:
                break
            if mixer is not None:
                mixer.reseed(epoch, i)
                images, targets = mixer(images, labels)
            with autocast:
                logits = run_model(images)
                if mixer is None:
                    loss_sum = criterion(logits.float(), labels)  # (summed over the real rows)
                else:  # (top-1 below is still against the hard labels)
                    loss_sum = soft_target_cross_entropy(logits, targets, reduction="sum")
            sums = batch_sums(loss_sum, logits, labels)
            running += sums
            # the mean over the real rows; a batch of only padding (skipped samples) has a zero loss, so that
            # every rank's backward stays in step; nothing is read back to the host
            loss = loss_sum / sums[0].clamp(min=1).to(loss_sum.dtype)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            lr_used = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            step += 1
            if i + 1 < epoch_steps and cfg.max_steps is not None and step >= cfg.max_steps:
                stopped = (i + 1, *totals())  # leave before the loader hands out another batch
                break
            if cfg.save_every and step % cfg.save_every == 0 and i + 1 < epoch_steps:  # mid-epoch, resumable
                _save(out, cfg, model, optimizer, schedule, scaler, train_loader, step, history, rank,
                      partial=(i + 1, *totals()))
            if (i + 1) % cfg.log_every == 0 or bar is not None and i + 1 == epoch_steps:  # (reads the sums back)
                seen, loss_so_far, _ = totals()
                loss_mean = loss_so_far / max(seen, 1)
                if bar is not None:
                    bar.update(0, f"loss {loss_mean:.4f}")
                if bar is None or not bar.enabled:  # plain lines for log files
                    log(f"  epoch {epoch} step {i + 1}/{epoch_steps} loss {loss_mean:.4f} "
                        f"{seen * world / (time.perf_counter() - t0):.1f} img/s")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close(clear=True)
        if stopped is not None:
            _save(out, cfg, model, optimizer, schedule, scaler, train_loader, step, history, rank, partial=stopped)
            log(f"stopped at step {step} (--max-steps) inside epoch {epoch}; --resume continues from there")
            break
        elapsed = time.perf_counter() - t0
        seen, loss_sum, correct = totals()
        loss_sum, correct, seen_all, seen_now = _all_sum([loss_sum, correct, seen, seen - seen_before], device)
        row = {"epoch": epoch, "step": step, "lr": lr_used,
               "train_loss": loss_sum / max(seen_all, 1), "train_top1": 100 * correct / max(seen_all, 1),
               "images_per_s": seen_now / elapsed, "epoch_s": elapsed}
        if val_loader is not None:
            row |= evaluate(model, val_loader, cfg, device)
        if cfg.on_error == "skip":
            row |= {"train_skipped": len(_skipped_everywhere(train_loader)),
                    **({"val_skipped": len(_skipped_everywhere(val_loader))} if val_loader is not None else {})}
        history.append(row)
        log(f"epoch {epoch}: " + " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in row.items() if k != "epoch"))
        _save(out, cfg, model, optimizer, schedule, scaler, train_loader, step, history, rank)
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    if cfg.on_error == "skip":
        for name, loader in (("training", train_loader), ("validation", val_loader)):
            skipped = _skipped_everywhere(loader) if loader is not None else {}
            shown = "; ".join(f"{k} ({v})" for k, v in list(skipped.items())[:5])
            log(f"{len(skipped)} bad {name} sample(s) skipped" + (f": {shown}" if shown else "")
                + (f" ... and {len(skipped) - 5} more" if len(skipped) > 5 else ""))
    return history


def _move_to_world(states: list[dict], total: int, steps: int, schedule, partial, world: int):
    """A checkpoint of another world size: the schedule's step moves to the same fraction of training in
    this world's steps per epoch (``steps``); returns ``(step, partial)``. The epoch's running sums
    (rank 0's, saved) are scaled to this world, so its training figures are estimates."""
    from dali_resizer.sampler import union_of_runs

    epoch = states[0]["epoch"]
    if any(s["batches_done"] or s.get("carried") for s in states):
        runs = union_of_runs(*(np.asarray(s.get("delivered") or [], dtype=np.int64).reshape(-1, 2) for s in states))
        fraction = float((runs[:, 1] - runs[:, 0]).sum()) / max(total, 1)
    else:
        fraction = 0.0
    step = round((epoch + fraction) * steps)
    schedule.last_epoch = step
    lrs = [base * factor(step) for base, factor in zip(schedule.base_lrs, schedule.lr_lambdas)]
    for group, lr in zip(schedule.optimizer.param_groups, lrs):
        group["lr"] = lr
    schedule._last_lr = lrs
    if partial is not None:
        scale = len(states) / world
        partial = (0, *(value * scale for value in partial[1:]))
    return step, partial


def _check_output(out: Path, cfg: TrainConfig) -> None:
    """A run's folder is continued (``--resume``) or replaced (``--overwrite``), never silently both."""
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume continues the run in --output and --overwrite replaces it: pass one")
    held = [name for name in ("checkpoint.pt", "metrics.csv", "metrics.json") if (out / name).exists()]
    if cfg.resume and not (out / "checkpoint.pt").is_file():
        raise ValueError(f"--resume: there is no checkpoint.pt in {out.resolve()} to continue from")
    if held and not (cfg.resume or cfg.overwrite):
        raise ValueError(f"{out.resolve()} already holds a run ({', '.join(held)}): pass --resume to continue it "
                         f"or --overwrite to replace it, or choose another --output")


def _skipped_everywhere(loader: DALILoader) -> dict[str, str]:
    """The bad samples every rank's loader skipped so far (one rank may meet a sample that another met
    in an earlier epoch: counted once)."""
    if not dist.is_initialized():
        return dict(loader.skipped)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(loader.skipped))
    return {name: problem for part in gathered for name, problem in part.items()}


def _save(out: Path, cfg, model, optimizer, schedule, scaler, loader, step: int, history, rank: int,
          partial: tuple | None = None) -> None:
    """Writes the checkpoint (rank 0) with every rank's loader state; collective under DDP."""
    loaders = [loader.state_dict()]
    if dist.is_initialized():
        loaders = [None] * dist.get_world_size()
        dist.all_gather_object(loaders, loader.state_dict())
    if rank != 0:
        return
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(), "loaders": loaders, "partial": partial, "step": step,
            "history": history, "rng": torch.get_rng_state(), "args": asdict(cfg)}
    tmp = out / "checkpoint.pt.tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, out / "checkpoint.pt")  # a crash mid-write never leaves a broken checkpoint
    (out / "metrics.json").write_text(json.dumps(history, indent=2))
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in history for k in row)))
        writer.writeheader()
        writer.writerows(history)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m dali_resizer.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="image folder or shards; a folder with train/ and val/ is split")
    g.add_argument("--val-data", help="validation image folder or shards (evaluation pipeline: center crop)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    g.add_argument("--num-threads", type=int, help="DALI threads per process (default: usable cores)")
    g.add_argument("--on-error", choices=("raise", "skip"), default=d.on_error,
                   help="a bad sample stops the run (raise), or is skipped, counted in the metrics and named at the "
                        "end (skip)")
    g.add_argument("--random-area", type=float, nargs=2, default=d.random_area, metavar=("LOW", "HIGH"),
                   help="training random-resized-crop area range (torchvision's scale)")
    g.add_argument("--random-aspect-ratio", type=float, nargs=2, default=d.random_aspect_ratio,
                   metavar=("LOW", "HIGH"), help="training crop aspect-ratio range (torchvision's ratio)")
    g.add_argument("--crop-ratio", type=float, default=d.crop_ratio,
                   help="evaluation center-crop ratio (default 0.875; or set --val-resize-size)")
    g.add_argument("--train-crop-size", type=int, default=d.train_crop_size,
                   help="the training crop the loader delivers to the resizer (default: --input-size)")
    g.add_argument("--val-crop-size", type=int, default=d.val_crop_size,
                   help="the evaluation center crop the loader delivers (default: --input-size)")
    g.add_argument("--val-resize-size", type=int, default=d.val_resize_size,
                   help="evaluation: the shorter side the image is resized to before the center crop (default: "
                        "the crop / --crop-ratio)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, default=d.interpolation,
                   help="the loader's resize filter (antialiased), as torchvision's reference script's flag")
    g.add_argument("--auto-augment", choices=AUTO_AUGMENT_POLICIES, default=d.auto_augment,
                   help="training: TrivialAugmentWide (ta_wide), RandAugment (ra) or AutoAugment's ImageNet policy, "
                        "in the DALI graph")
    g.add_argument("--ra-magnitude", type=int, default=d.ra_magnitude, help="RandAugment's magnitude (of 31 bins)")
    g.add_argument("--random-erase", type=float, default=d.random_erase,
                   help="training: the probability of random erasing (torchvision's RandomErasing), in the graph")
    g.add_argument("--mixup-alpha", type=float, default=d.mixup_alpha, help="MixUp's alpha on each batch (0: off)")
    g.add_argument("--cutmix-alpha", type=float, default=d.cutmix_alpha, help="CutMix's alpha on each batch (0: off)")
    g.add_argument("--mixup-switch-prob", type=float, default=d.mixup_switch_prob,
                   help="with both on, the probability that a batch takes CutMix rather than MixUp")
    g.add_argument("--roi-decode", action=argparse.BooleanOptionalAction, default=d.roi_decode,
                   help="decode only the crops' windows (--no-roi-decode: whole images, cropped after, the hardware "
                        "JPEG decoder's way); default: windows on the CPU, whole images on a GPU (nvImageCodec 0.9 "
                        "fails on windows there, its issue 55)")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=d.cache,
                   help="s3:// shards: read whole local copies from the node's shard cache "
                        "($DALI_RESIZER_CACHE/shards), downloaded ahead (--no-cache: DALI reads the objects in place)")
    g.add_argument("--cache-limit", default=d.cache_limit, metavar="BYTES",
                   help="the shard cache's size, e.g. 200GB (default: $DALI_RESIZER_CACHE_LIMIT, else 80%% of the free "
                        "disk)")
    g = p.add_argument_group("model")
    g.add_argument("--resizer", choices=RESIZERS, default=d.resizer,
                   help="learned (Talebi & Milanfar), muller (Tu et al., 4 parameters), or a fixed bilinear/bicubic "
                        "resize at the same output size (the baseline)")
    g.add_argument("--size", type=int, default=d.size, help="backbone input size (resizer output)")
    g.add_argument("--antialias", action=argparse.BooleanOptionalAction, default=None,
                   help="low-pass filter the resizer's fixed resizes when they downscale (default: the module's "
                        "own: on for bilinear/bicubic, as torchvision's Resize; off for learned and muller, as "
                        "in their papers)")
    g.add_argument("--input-size", type=int, default=d.input_size, help="resizer input size (loader output)")
    g.add_argument("--num-filters", type=int, default=d.num_filters)
    g.add_argument("--num-res-blocks", type=int, default=d.num_res_blocks)
    g.add_argument("--zero-init", action="store_true", help="start the learned resizer as exactly the fixed resize")
    g.add_argument("--memory-efficient", action="store_true",
                   help="learned resizer: recompute its input-resolution stem in backward (about a third of its "
                        "activation memory, for more compute; LearnableResizer(memory_efficient=True))")
    g.add_argument("--cpu-kernels", action="store_true",
                   help="learned resizer on CPU: its stem and BatchNorms through C++ kernels (compiled on "
                        "first use; LearnableResizer(cpu_kernels=True))")
    g.add_argument("--backbone", default=d.backbone, help="torchvision classification model name, e.g. resnet18, "
                   "resnet50, mobilenet_v2, densenet121, efficientnet_b0")
    g.add_argument("--num-classes", type=int, help="default: the number of classes in --data")
    g.add_argument("--init-backbone", metavar="CKPT", help="warm-start the backbone from a checkpoint of this tool "
                   "(the paper's fine-tuning: backbone from a bilinear run, resizer random)")
    g.add_argument("--init-resizer", metavar="CKPT", help="start the resizer from another run's checkpoint")
    g = p.add_argument_group("optimisation (a --recipe sets the defaults; each option below overrides it)")
    g.add_argument("--recipe", choices=list(RECIPES), default=d.recipe,
                   help="adamw: AdamW lr 1e-3, wd 0.05 (not on norms and biases), 1 warm-up epoch, cosine; "
                        "paper: SGD momentum 0.9, lr 0.05 (0.005 with --init-backbone), wd 1e-4, x0.94 every 2 epochs")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, help="peak learning rate (after warm-up)")
    g.add_argument("--resizer-lr", type=float, help="the resizer's own learning rate (default: --lr)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--decay-norm-and-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="weight decay on BatchNorm weights and biases too (paper: yes; adamw: no)")
    g.add_argument("--schedule", choices=SCHEDULES,
                   help="cosine to zero, or step: x--lr-decay every --decay-every epochs")
    g.add_argument("--warmup-epochs", type=float, help="linear warm-up, in epochs (fractions allowed)")
    g.add_argument("--lr-decay", type=float, default=d.lr_decay,
                   help="step schedule: factor every --decay-every epochs")
    g.add_argument("--decay-every", type=int, default=d.decay_every)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--precision", choices=list(PRECISIONS), default=d.precision,
                   help="autocast precision (bf16 works on CPUs too)")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("run")
    g.add_argument("--output", default=d.output, help="checkpoint and metrics folder")
    g.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT/checkpoint.pt (in any world size: the rest of an epoch is split "
                   "among the new ranks)")
    g.add_argument("--overwrite", action="store_true", help="replace the run OUTPUT already holds")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke runs)")
    g.add_argument("--save-every", type=int, metavar="STEPS",
                   help="also checkpoint every STEPS optimizer steps inside an epoch (--resume continues mid-epoch)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", help="default: this rank's GPU when there is one, else the CPU")
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--quiet", action="store_true")
    args = vars(p.parse_args(argv))
    return TrainConfig(**{f.name: args[f.name] for f in fields(TrainConfig) if f.name in args})


def main(argv: list[str] | None = None) -> list[dict]:
    """Trains as the command line says; returns the metrics, a row per epoch."""
    cfg = parse_args(argv)
    try:
        return train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def cli(argv: list[str] | None = None) -> int:
    """The command: a problem with the arguments, the output folder or the data is one line, exit 2."""
    try:
        main(argv)
    except ValueError as e:  # (BadSampleError too: it names the sample)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
