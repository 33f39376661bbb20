"""Images per second into the model: torchvision's usual CPU loading against DALI + the learnable resizer.

Every contender reads the same images, uses the same number of CPU workers/threads and ends at the
same output size; each is measured in the same run, so the ratios compare like with like.

    python benchmarks/throughput.py                      # embedded synthetic default, all cores
    python benchmarks/throughput.py --data ../shared/data/imagenet-sample --json results/tp.json

Contenders:
    torch-pil-bilinear  torch DataLoader, worker processes: PIL decode, RandomResizedCrop(224, bilinear), flip
    dali-bilinear       DALILoader straight to the output size (no learned stage)
    dali-learned        DALILoader to the working size (448), then LearnableResizer forward to 224
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dali_resizer import DALILoader, LearnableResizer, make_synthetic_folder  # noqa: E402


@dataclass
class Config:
    data: str | None = None
    batch_size: int = 32
    size: int = 224
    input_size: int = 448
    threads: int = len(os.sched_getaffinity(0))
    device: str = "auto"
    repeats: int = 3
    contenders: list[str] = field(default_factory=lambda: list(CONTENDERS))
    json: str | None = None


@dataclass
class Result:
    name: str
    images: int
    seconds: list[float]

    @property
    def rates(self) -> list[float]:
        return [self.images / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def torch_pil(cfg: Config, device: torch.device, interpolation: str) -> Callable[[], Iterable]:
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomResizedCrop(cfg.size, interpolation=transforms.InterpolationMode(interpolation)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(cfg.data, transform=transform),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.threads,
        persistent_workers=True,
        pin_memory=device.type == "cuda",
    )

    def epoch():
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    return epoch


def dali(cfg: Config, device: torch.device, learned: bool) -> Callable[[], Iterable]:
    loader = DALILoader(
        cfg.data,
        batch_size=cfg.batch_size,
        size=cfg.input_size if learned else cfg.size,
        num_threads=cfg.threads,
        device=device,
    )
    if not learned:
        return lambda: iter(loader)
    resizer = LearnableResizer(cfg.size).to(device).eval()

    def epoch():
        with torch.inference_mode():
            for images, labels in loader:
                yield resizer(images), labels

    return epoch


CONTENDERS: dict[str, Callable[[Config, torch.device], Callable[[], Iterable]]] = {
    "torch-pil-bilinear": lambda cfg, dev: torch_pil(cfg, dev, "bilinear"),
    "dali-bilinear": lambda cfg, dev: dali(cfg, dev, learned=False),
    "dali-learned": lambda cfg, dev: dali(cfg, dev, learned=True),
}
BASELINE = "torch-pil-bilinear"


def measure(name: str, make_epoch: Callable[[], Iterable], device: torch.device, repeats: int) -> Result:
    """One warm-up epoch, then ``repeats`` timed epochs; the device is synchronized inside the timing."""
    seconds, images = [], 0
    for rep in range(repeats + 1):
        count = 0
        start = time.perf_counter()
        for out, _ in make_epoch():
            count += out.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if rep:  # rep 0 is the warm-up
            seconds.append(elapsed)
            images = count
        print(f"  {name:<20} {'warm-up' if rep == 0 else f'run {rep}/{repeats}'}: {count / elapsed:8.1f} img/s",
              file=sys.stderr, flush=True)
    return Result(name, images, seconds)


def environment(device: torch.device) -> dict:
    import nvidia.dali
    import torchvision

    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "dali": nvidia.dali.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": run("git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def parse_args(argv: list[str] | None = None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="image folder (default: the embedded synthetic set, generated on first use)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--size", type=int, default=d.size, help="output size fed to the backbone")
    p.add_argument("--input-size", type=int, default=d.input_size, help="working size fed to the learnable resizer")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="DataLoader workers = DALI threads = torch threads (default: all usable cores)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed epochs per contender, after one warm-up")
    p.add_argument("--contenders", nargs="+", choices=list(CONTENDERS), default=d.contenders)
    p.add_argument("--json", help="write all figures, versions and the machine to this file")
    return Config(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else torch.device(cfg.device)
    if cfg.data is None:
        print("generating/using the embedded synthetic data set ...", file=sys.stderr, flush=True)
        cfg.data = str(make_synthetic_folder())
    torch.set_num_threads(cfg.threads)
    env = environment(device)
    print(f"{cfg.data}: threads={cfg.threads} batch={cfg.batch_size} device={device} "
          f"cpu={env['cpu']!r} gpu={env['gpu']!r}", file=sys.stderr)

    results = []
    for name in cfg.contenders:
        results.append(measure(name, CONTENDERS[name](cfg, device), device, cfg.repeats))

    base = next((r.median for r in results if r.name == BASELINE), None)
    print(f"\n{'contender':<20} {'img/s':>9} {'spread':>17} {'vs ' + BASELINE:>24}")
    rows = []
    for r in results:
        ratio = r.median / base if base else None
        spread = f"{min(r.rates):.1f}-{max(r.rates):.1f}"
        print(f"{r.name:<20} {r.median:9.1f} {spread:>17} {f'{ratio:.2f}x' if ratio else '-':>24}")
        rows.append({"name": r.name, "images": r.images, "seconds": r.seconds, "images_per_s": r.median,
                     "images_per_s_min": min(r.rates), "images_per_s_max": max(r.rates), "ratio_to_baseline": ratio})
    report = {"config": asdict(cfg), "environment": env, "baseline": BASELINE, "results": rows}
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
