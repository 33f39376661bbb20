"""Accuracy at the same backbone resolution: learned resizer against a fixed bilinear resize.

    python benchmarks/accuracy.py                          # generated "fine detail" set, ~11 min on 2 cores
    python benchmarks/accuracy.py --data DIR --input-size 448 --size 224 --epochs 30   # any real folder

Both sides get the same data, loader, backbone, epochs, recipe and seeds; only the module in front of
the backbone differs (``LearnableResizer`` or ``FixedResizer(bilinear, antialias=True)``, torchvision's
default). Reports top-1 per seed, mean ± std, and the paired difference.

The transfer experiment (the paper's section on resizers across backbones): a resizer trained with
backbone A is fine-tuned briefly with backbone B, against B trained for the same steps behind a
randomly initialised resizer.

The generated set (``make_detail_set``) is built so that its classes depend on detail a fixed 4x
downscale loses, which is where a learned resizer can help: each ``size x size`` PNG holds colored 1/f
noise, a soft blob in the top or the bottom half (a coarse cue, visible at any resolution), and, inside
the blob, a fine grating of period 2.5-3 px or 4.5-5.5 px in a random orientation (a fine cue: both
periods are below the 4x-downscaled Nyquist limit of 8 px, so an antialiased resize removes them).
The class is (coarse cue, fine cue): 4 classes. A classifier that sees only the downscaled image can
reach about 50% (the coarse cue); one that keeps the fine cue can reach 100%. Crops and rescaling
would change the grating periods, so this set trains with full-image crops and flips only, and
evaluates with ``crop_ratio=1``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dali_resizer.train import main as train_main  # noqa: E402

FINE_PERIODS = ((2.5, 3.0), (4.5, 5.5))  # px at the input size; both below 8 px (Nyquist after 4x)


def detail_image(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of class ``label`` in [0, 4): coarse = label // 2, fine = label % 2."""
    coarse, fine = divmod(label, 2)
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2)
    f[0, 0] = 1
    noise = np.stack([np.fft.irfft2((rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f, s=(size, size))
                      for _ in range(3)], axis=-1)
    noise /= noise.std()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy = rng.uniform(0.2, 0.35) * size if coarse == 0 else rng.uniform(0.65, 0.8) * size
    cx = rng.uniform(0.25, 0.75) * size
    blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.14 * size) ** 2)))
    period = rng.uniform(*FINE_PERIODS[fine])
    angle = rng.uniform(0, np.pi)
    grating = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    image = 0.4 * noise + 2.0 * blob[..., None] * rng.uniform(0.6, 1.0, size=3) + 0.9 * blob[..., None] * grating[..., None]
    return np.clip(110 + 45 * image, 0, 255).astype(np.uint8)


def make_detail_set(root: Path, *, size: int, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """Writes ``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` (lossless: JPEG would blur the
    gratings); reuses a complete earlier set."""
    from PIL import Image

    marker = root / ".complete"
    if marker.is_file():
        return root
    for split, count, split_seed in (("train", train_per_class, seed), ("val", val_per_class, seed + 1)):
        for label in range(4):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([split_seed, label, i])
                Image.fromarray(detail_image(rng, size, label)).save(folder / f"{i:05d}.png")
    marker.touch()
    return root


def run(args: list[str]) -> dict:
    t0 = time.perf_counter()
    history = train_main(args + ["--quiet"])
    return {"val_top1": history[-1]["val_top1"], "val_loss": history[-1]["val_loss"],
            "seconds": time.perf_counter() - t0, "history": history}


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a real image folder with train/ and val/ (default: the generated detail set)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--backbone", default="resnet18", help="backbone A")
    p.add_argument("--transfer-backbone", default="mobilenet_v2", help="backbone B of the transfer experiment")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--transfer-epochs", type=int, default=4)
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--size", type=int, default=24, help="backbone input: input-size / 4 by default")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01, help="0.01: both sides train stably here (0.05, the paper's, left the training loss above chance for several epochs)")
    p.add_argument("--train-per-class", type=int, default=150)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--output", default="runs/accuracy", help="runs, checkpoints and accuracy.json go here")
    p.add_argument("--no-transfer", action="store_true")
    a = p.parse_args(argv)

    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    if a.data:
        data, crops = a.data, []
    else:
        data = str(make_detail_set(out / f"detail-set-{a.input_size}", size=a.input_size,
                                   train_per_class=a.train_per_class, val_per_class=a.val_per_class))
        crops = ["--random-area", "1", "1", "--random-aspect-ratio", "1", "1", "--crop-ratio", "1"]
    common = ["--data", data, "--input-size", str(a.input_size), "--size", str(a.size), "--batch-size",
              str(a.batch_size), "--lr", str(a.lr), *crops]

    results: dict = {"args": vars(a), "runs": {}}
    for seed in a.seeds:
        for resizer in ("bilinear", "learned"):
            name = f"{a.backbone}-{resizer}-seed{seed}"
            print(f"{name} ...", file=sys.stderr, flush=True)
            results["runs"][name] = run([*common, "--backbone", a.backbone, "--resizer", resizer, "--seed", str(seed),
                                         "--epochs", str(a.epochs), "--output", str(out / name)])
            print(f"  top-1 {results['runs'][name]['val_top1']:.2f}%  ({results['runs'][name]['seconds']:.0f} s)",
                  file=sys.stderr, flush=True)

    bil = [results["runs"][f"{a.backbone}-bilinear-seed{s}"]["val_top1"] for s in a.seeds]
    lrn = [results["runs"][f"{a.backbone}-learned-seed{s}"]["val_top1"] for s in a.seeds]
    diff = [b - c for b, c in zip(lrn, bil)]
    results["comparison"] = {"bilinear": bil, "learned": lrn, "learned_minus_bilinear": diff}

    if not a.no_transfer:
        seed = a.seeds[0]
        donor = out / f"{a.backbone}-learned-seed{seed}" / "checkpoint.pt"
        for init in ("transferred", "random"):
            name = f"{a.transfer_backbone}-{init}-resizer-seed{seed}"
            extra = ["--init-resizer", str(donor)] if init == "transferred" else []
            print(f"{name} ...", file=sys.stderr, flush=True)
            results["runs"][name] = run([*common, "--backbone", a.transfer_backbone, "--resizer", "learned",
                                         "--seed", str(seed), "--epochs", str(a.transfer_epochs),
                                         "--output", str(out / name), *extra])
            print(f"  top-1 {results['runs'][name]['val_top1']:.2f}%", file=sys.stderr, flush=True)
        results["transfer"] = {k: results["runs"][f"{a.transfer_backbone}-{k}-resizer-seed{seed}"]["val_top1"]
                               for k in ("transferred", "random")}

    print(f"\n{a.backbone}, {a.input_size} -> {a.size}, {a.epochs} epochs, seeds {a.seeds}: validation top-1 (%)")
    print(f"  bilinear (fixed, antialiased)  {summary(bil)}   per seed {[round(v, 2) for v in bil]}")
    print(f"  learned resizer                {summary(lrn)}   per seed {[round(v, 2) for v in lrn]}")
    print(f"  learned - bilinear (paired)    {summary(diff)}")
    if "transfer" in results:
        t = results["transfer"]
        print(f"transfer to {a.transfer_backbone}, {a.transfer_epochs} epochs: resizer from {a.backbone} "
              f"{t['transferred']:.2f}%  vs random-init resizer {t['random']:.2f}%")
    (out / "accuracy.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
