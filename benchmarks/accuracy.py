"""Accuracy at the same backbone resolution: learned resizers against a fixed resize, with seeds and intervals.

    python benchmarks/accuracy.py            # both generated tasks, 3 seeds, ~30 min on 2 CPU cores
    python benchmarks/accuracy.py --quick    # a smoke run (tiny sets, 1 epoch, 1 seed), for CI
    python benchmarks/accuracy.py --data DIR --input-size 448 --size 224 --backbone resnet50   # a real folder

Every arm trains through ``dali_resizer.train`` (the real DALI loader, the shipped recipe) with the same
data, backbone, epochs, recipe and seeds; only the module in front of the backbone differs:

- ``learned``: ``LearnableResizer`` (Talebi & Milanfar);
- ``muller``: ``MullerResizer`` (Tu, Talebi & Milanfar; 4 parameters);
- ``bilinear``: ``FixedResizer(bilinear, antialias=True)``, torchvision's default downscale;
- ``bilinear-aliased``: ``FixedResizer(bilinear, antialias=False)``, a plain ``F.interpolate``: it
  samples the image and aliases fine detail into coarser patterns, as the learned resizers' own
  internal resizes do (their papers' default); it tells how much of a cue survives by aliasing alone;
- ``control`` (the "fine" task): the same backbone on the full-resolution input, with no resize at
  all: it shows that the task is learnable by this backbone and recipe, so a fixed resize that stays
  at chance loses the cue, not the training.

The generated tasks (``make_detail_set``) put the class in detail that a fixed 4x downscale loses: each
``size x size`` PNG holds colored 1/f noise, a soft blob in the top or the bottom half (a coarse cue,
visible at any resolution) and, inside the blob, a fine grating of period 2.5-3 px or 4.5-5.5 px in a
random orientation (a fine cue: both periods are below the 4x-downscaled Nyquist limit of 8 px, so an
antialiased resize removes them).

- Task ``fine``: 2 classes, the fine cue alone (the blob's half is random). A fixed downscale leaves
  chance, 50%; keeping the fine cue allows 100%.
- Task ``coarse+fine``: 4 classes, (coarse cue, fine cue). A fixed downscale caps top-1 near 50% (the
  coarse cue); keeping the fine cue allows 100%.
- Task ``nyquist`` (opt-in, ``--tasks nyquist``): 2 classes, the orientation of a period-2 grating over
  the whole image. A bilinear downscale by an even factor without antialiasing averages one even and
  one odd pixel in each direction, so the grating cancels exactly (the antialiased one cancels it
  away from the border): a cue that an aliasing resize cannot keep either, unlike the gratings of the
  other two tasks, whose periods survive as a coarser alias.

Crops and rescaling would change the grating periods, so the generated sets train with full-image
crops and flips only, and evaluate with ``crop_ratio=1``.

For each task and arm: validation top-1 per seed, the mean, the paired difference of each learned arm
against ``bilinear`` with a 95% confidence interval (Student's t over seeds), and the last epoch's
training loss beside the chance loss, ``ln(classes)``, so that an arm that stays at chance on
validation can be told apart from one that did not train. The JSON (``--output``/accuracy.json) holds
every run's per-epoch curve.

On a real folder (``--data``), the paper's scale on one GPU (not run on the CPU machines; estimated
at under 10 minutes per seed on one H200, all three arms):

    python benchmarks/accuracy.py --data imagenette2 --input-size 448 --size 224 --backbone resnet50 \
        --precision bf16 --batch-size 128 --epochs 16 --seeds 0 1 2 --arms learned muller bilinear
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dali_resizer.train import main as train_main  # noqa: E402

FINE_PERIODS = ((2.5, 3.0), (4.5, 5.5))  # px at the input size; both below 8 px (Nyquist after 4x)


def detail_image(rng: np.random.Generator, size: int, label: int, task: str = "coarse+fine") -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of class ``label``. Task ``"coarse+fine"``: label in [0, 4),
    coarse = label // 2, fine = label % 2. Task ``"fine"``: label in [0, 2) is the fine cue alone, and the
    blob's half is drawn at random (a nuisance, not a cue). Task ``"nyquist"``: label in [0, 2) is the
    orientation of a full-image grating of period 2 px (0: it varies along x, 1: along y), with a random
    sign and contrast; the blob's half is random."""
    if task in ("fine", "nyquist"):
        coarse, fine = int(rng.integers(2)), label
    else:
        coarse, fine = divmod(label, 2)
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2)
    f[0, 0] = 1
    noise = np.stack([np.fft.irfft2((rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f,
                                    s=(size, size))
                      for _ in range(3)], axis=-1)
    noise /= noise.std()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy = rng.uniform(0.2, 0.35) * size if coarse == 0 else rng.uniform(0.65, 0.8) * size
    cx = rng.uniform(0.25, 0.75) * size
    blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.14 * size) ** 2)))
    if task == "nyquist":
        # Every output pixel of a bilinear downscale by an even factor without antialiasing averages
        # one even and one odd column and row: a period-2 grating cancels exactly, in either orientation.
        stripes = (1.0 - 2.0 * ((xx if label == 0 else yy).astype(np.int64) % 2)) * rng.choice([-1.0, 1.0])
        image = (0.4 * noise + blob[..., None] * rng.uniform(0.6, 1.0, size=3)
                 + rng.uniform(0.5, 0.9) * stripes[..., None])
        return np.clip(np.rint(110 + 35 * image), 0, 255).astype(np.uint8)  # (kept off the clipping range)
    period = rng.uniform(*FINE_PERIODS[fine])
    angle = rng.uniform(0, np.pi)
    grating = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    image = (0.4 * noise + 2.0 * blob[..., None] * rng.uniform(0.6, 1.0, size=3)
             + 0.9 * blob[..., None] * grating[..., None])
    return np.clip(110 + 45 * image, 0, 255).astype(np.uint8)


TASKS = {"fine": 2, "coarse+fine": 4, "nyquist": 2}  # task: number of classes
DEFAULT_TASKS = ("fine", "coarse+fine")
CONTROL_TASKS = ("fine", "nyquist")  # the class is the fine cue alone: the full-resolution control applies


def make_detail_set(root: Path, *, size: int, train_per_class: int, val_per_class: int, seed: int = 0,
                    task: str = "coarse+fine") -> Path:
    """Writes ``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` (lossless: JPEG would blur the
    gratings); reuses a complete earlier set."""
    from PIL import Image

    if task not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
    marker = root / ".complete"
    if marker.is_file():
        return root
    for split, count, split_seed in (("train", train_per_class, seed), ("val", val_per_class, seed + 1)):
        for label in range(TASKS[task]):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([split_seed, label, i])
                Image.fromarray(detail_image(rng, size, label, task)).save(folder / f"{i:05d}.png")
    marker.touch()
    return root


T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,  # Student's t at 0.975, df 1..30
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and the two ends of its 95% confidence interval (Student's t); a single value has none."""
    m = statistics.mean(values)
    if len(values) < 2:
        return m, math.nan, math.nan
    t = T_975[len(values) - 2] if len(values) <= len(T_975) + 1 else 1.96  # (2.042 at df 30)
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def stats(values: list[float]) -> dict:
    return dict(zip(("mean", "low", "high"), interval(values))) | {"per_seed": values}


def run(args: list[str]) -> dict:
    t0 = time.perf_counter()
    history = train_main(args + ["--quiet", "--overwrite"])  # (a rerun replaces the arm's earlier run)
    return {"val_top1": history[-1]["val_top1"], "train_loss": history[-1]["train_loss"],
            "seconds": time.perf_counter() - t0, "history": history}


ARMS = {  # arm: (train options, output size: the backbone's input, or the input's own size)
    "learned": (["--resizer", "learned"], "size"),
    "muller": (["--resizer", "muller"], "size"),
    "bilinear": (["--resizer", "bilinear"], "size"),
    "bilinear-aliased": (["--resizer", "bilinear", "--no-antialias"], "size"),
    "control": (["--resizer", "bilinear"], "input"),  # a resize to the input's own size is no resize at all
}
QUICK = ["--seeds", "0", "--epochs", "1", "--input-size", "32", "--size", "8", "--batch-size", "8",
         "--train-images", "16", "--val-images", "16"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a real image folder with train/ and val/ (default: the generated tasks)")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(DEFAULT_TASKS),
                   help="generated tasks to run (nyquist: opt-in)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS),
                   help="default: all on 'fine' and 'nyquist'; all but control elsewhere")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--size", type=int, default=24, help="backbone input: input-size / 4 by default")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--recipe", default="adamw", help="dali_resizer.train's --recipe, the same for every arm")
    p.add_argument("--precision", default="fp32", help="dali_resizer.train's --precision")
    p.add_argument("--train-images", type=int, default=2000, help="generated tasks: training images per task")
    p.add_argument("--val-images", type=int, default=500, help="generated tasks: validation images per task")
    p.add_argument("--output", default="runs/accuracy", help="runs, checkpoints and accuracy.json go here")
    p.add_argument("--transfer", action="store_true",
                   help="also fine-tune the first seed's learned resizer with --transfer-backbone, against a "
                        "random-init resizer for the same epochs (the paper's transfer across backbones)")
    p.add_argument("--transfer-backbone", default="mobilenet_v2")
    p.add_argument("--transfer-epochs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: " + " ".join(QUICK))
    p.add_argument("extra", nargs="*", help="after --: more dali_resizer.train options for every arm")
    raw = list(sys.argv[1:] if argv is None else argv)
    a = p.parse_args(QUICK + raw if "--quick" in raw else raw)

    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    tasks = ["data"] if a.data else a.tasks
    results: dict = {"args": vars(a), "tasks": {}}
    for task in tasks:
        if a.data:
            train_dir = Path(a.data) / "train"
            data, crops = a.data, []
            classes = sum(d.is_dir() for d in train_dir.iterdir()) if train_dir.is_dir() else None
        else:
            per_class = (a.train_images // TASKS[task], a.val_images // TASKS[task])
            data = str(make_detail_set(out / f"set-{task}-{a.input_size}-{per_class[0]}-{per_class[1]}",
                                       size=a.input_size, train_per_class=per_class[0], val_per_class=per_class[1],
                                       task=task))
            crops = ["--random-area", "1", "1", "--random-aspect-ratio", "1", "1", "--crop-ratio", "1"]
            classes = TASKS[task]
        arms = a.arms or [arm for arm in ARMS if arm != "control" or task in CONTROL_TASKS]
        common = ["--data", data, "--input-size", str(a.input_size), "--batch-size", str(a.batch_size),
                  "--recipe", a.recipe, "--precision", a.precision, "--epochs", str(a.epochs), "--backbone", a.backbone,
                  *crops, *a.extra]
        runs: dict = {}
        for seed in a.seeds:
            for arm in arms:
                options, size = ARMS[arm]
                name = f"{task}-{arm}-seed{seed}"
                print(f"{name} ...", file=sys.stderr, flush=True)
                r = run([*common, *options, "--size", str(a.size if size == "size" else a.input_size),
                         "--seed", str(seed), "--output", str(out / name)])
                runs.setdefault(arm, []).append(r | {"seed": seed})
                print(f"  top-1 {r['val_top1']:.2f}%  train loss {r['train_loss']:.3f}  ({r['seconds']:.0f} s)",
                      file=sys.stderr, flush=True)
        results["tasks"][task] = summarise(runs, classes)
        if a.transfer and "learned" in runs:
            results["tasks"][task]["transfer"] = transfer(a, common, out, task)
    report(a, results)
    (out / "accuracy.json").write_text(json.dumps(results, indent=2))
    return results


def summarise(runs: dict, classes: int | None) -> dict:
    top1 = {arm: [r["val_top1"] for r in rs] for arm, rs in runs.items()}
    summary = {"classes": classes, "chance_loss": math.log(classes) if classes else None, "runs": runs,
               "top1": {arm: stats(v) for arm, v in top1.items()},
               "train_loss": {arm: [r["train_loss"] for r in rs] for arm, rs in runs.items()}, "paired": {}}
    pairs = [(arm, "bilinear") for arm in ("learned", "muller", "bilinear-aliased")]
    pairs += [("learned", "bilinear-aliased"), ("learned", "muller")]
    for arm, base in pairs:
        if arm in top1 and base in top1:
            summary["paired"][f"{arm}-{base}"] = stats([x - y for x, y in zip(top1[arm], top1[base])])
    return summary


def transfer(a, common: list[str], out: Path, task: str) -> dict:
    seed = a.seeds[0]
    donor = out / f"{task}-learned-seed{seed}" / "checkpoint.pt"
    common = list(common)
    common[common.index("--backbone") + 1] = a.transfer_backbone
    common[common.index("--epochs") + 1] = str(a.transfer_epochs)
    result = {}
    for init in ("transferred", "random"):
        name = f"{task}-{a.transfer_backbone}-{init}-resizer-seed{seed}"
        extra = ["--init-resizer", str(donor)] if init == "transferred" else []
        print(f"{name} ...", file=sys.stderr, flush=True)
        result[init] = run([*common, "--resizer", "learned", "--size", str(a.size), "--seed", str(seed),
                            "--output", str(out / name), *extra])
    return result


def fmt(s: dict) -> str:
    if math.isnan(s["low"]):
        return f"{s['mean']:6.2f}"
    return f"{s['mean']:6.2f} [{s['low']:6.2f}, {s['high']:6.2f}]"


def report(a, results: dict) -> None:
    print(f"\n{a.backbone}, {a.input_size} -> {a.size}, recipe {a.recipe}, {a.epochs} epochs, seeds {a.seeds}: "
          "validation top-1 (%), mean [95% CI]")
    for task, t in results["tasks"].items():
        chance = f", chance loss ln({t['classes']}) = {t['chance_loss']:.3f}" if t["classes"] else ""
        print(f"task {task}{chance}")
        for arm, s in t["top1"].items():
            loss = " ".join(f"{v:.3f}" for v in t["train_loss"][arm])
            print(f"  {arm:16s} {fmt(s)}   per seed {[round(v, 1) for v in s['per_seed']]}   last train loss {loss}")
        for name, s in t["paired"].items():
            print(f"  {name:26s} (paired) {fmt(s)}   per seed {[round(v, 1) for v in s['per_seed']]}")
        if "transfer" in t:
            tr = t["transfer"]
            print(f"  transfer to {a.transfer_backbone}, {a.transfer_epochs} epochs: trained resizer "
                  f"{tr['transferred']['val_top1']:.2f}% vs random-init {tr['random']['val_top1']:.2f}%")
    checks = []
    if "fine" in results["tasks"]:
        top = results["tasks"]["fine"]["top1"]
        checks += [("fine: learned >= 90% on every seed", "learned", lambda v: min(v) >= 90),
                   ("fine: bilinear <= 60% on every seed", "bilinear", lambda v: max(v) <= 60),
                   ("fine: control >= 95% on every seed", "control", lambda v: min(v) >= 95)]
        checks = [(text, top[arm]["per_seed"], test) for text, arm, test in checks if arm in top]
    if "coarse+fine" in results["tasks"]:
        d = results["tasks"]["coarse+fine"]["paired"].get("learned-bilinear")
        if d:
            checks.append(("coarse+fine: learned - bilinear >= +20 points, CI above 0", d,
                           lambda d: d["mean"] >= 20 and d["low"] > 0))
    results["checks"] = {}
    for text, value, test in checks:
        ok = bool(test(value))
        results["checks"][text] = ok
        print(f"check: {'yes' if ok else 'NO '}  {text}")


if __name__ == "__main__":
    main()
