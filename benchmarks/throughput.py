"""Images per second into the model: torchvision's usual CPU loading against DALI + the learnable resizer.

Every contender reads the same images, uses the same number of CPU workers/threads and ends at the
same output size; all are measured in the same run, so the ratios compare like with like.

    python benchmarks/throughput.py                                  # embedded synthetic set, all cores
    python benchmarks/throughput.py --data ../shared/data/imagenet-sample --json results/tp.json
    python benchmarks/throughput.py --megapixels 0.25 1 4 --threads 1 2 --plot results/tp.png
    python benchmarks/throughput.py --as-shards      # the same images as WebDataset shards
    python benchmarks/throughput.py --data s3://bucket/shards/train  # S3 against a local copy, same shards

Contenders (images/s of finished batches at the backbone's input size, on --device):
    torch-pil-bilinear   torch DataLoader, worker processes: PIL decode, RandomResizedCrop(size, bilinear),
                         flip, normalize, collate, move to the device (the baseline of every ratio)
    torch-pil-bicubic    the same with bicubic
    webdataset-pil-bilinear  (shard sources, instead of the two above, and their baseline) webdataset's own
                         pipeline in DataLoader workers: shard shuffle, sample buffer shuffle, same PIL transform
    dali-bilinear        DALILoader straight to the output size (no learned stage)
    dali-learned         DALILoader to the working size (--input-size), then LearnableResizer forward
    dali-learned-train   the same plus backward through the resizer (what training pays)
    decode-only          DALI read + full decode at native resolution, nothing else: the floor
    decode-only-plain-upsampling  (CUDA) the same with nvJPEG's own chroma upsampling instead of the
                         loader's libjpeg-turbo-equal ("fancy") one: what matching the CPU decode costs
    torchvision-decode-jpeg  (image folders of JPEGs) DataLoader workers read the files,
                         torchvision.io.decode_jpeg(device=--device) decodes the batch (nvJPEG on CUDA),
                         v2 RandomResizedCrop/flip/normalize per image on the device: the GPU alternative
    dali-learned-<backbone>-train  with --backbone: resizer + backbone forward/backward and an SGD step

Augmentation contenders, each against the same pipeline without it (column "vs plain"):
    dali-bilinear-ta-wide     dali-bilinear + TrivialAugmentWide in the DALI graph
    dali-bilinear-ra          dali-bilinear + RandAugment (2 operations, magnitude 9)
    dali-bilinear-erase       dali-bilinear + random erasing (p=0.25, as the reference recipe)
    dali-bilinear-mix         dali-bilinear + MixUp/CutMix on the delivered batch (alpha 0.2 / 1.0)
    dali-bilinear-recipe      all of TrivialAugmentWide, random erasing and MixUp/CutMix
    torch-pil-bilinear-recipe torch-pil-bilinear with torchvision's TrivialAugmentWide and RandomErasing,
                              and v2.MixUp/CutMix on the batch: the same recipe on the CPU (against
                              torch-pil-bilinear)

With an ``s3://`` source the DALI contenders run twice, over the object store (read in place by DALI,
``cache=False``) and over a local copy of the same objects (downloaded once), and the table adds the
ratio S3 / local; the torch contenders run on the local copy only. ``benchmarks/object_storage.py``
measures the loader's shard cache, which is the default for ``s3://`` shards.

Each pass's first batch is taken before its clock starts (the pipeline's build, worker start-up, the first
decode). The resizer contenders run channels_last, under bf16 autocast on CUDA, as README trains it.

Per contender: median images/s and spread over --repeats timed passes after one warm-up, the ratio to
torch-pil-bilinear, the efficiency against decode-only (its images/s over decode-only's), CPU seconds
per image (this process and its workers), the peak memory of the process tree (PSS) and, on CUDA, the
peak memory torch allocated and the peak of the device's memory in use (DALI's pools and nvJPEG's too).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dali_resizer import DALILoader, LearnableResizer, MixUpCutMix, make_synthetic_folder  # noqa: E402
from dali_resizer.progress import ProgressBar  # noqa: E402

BASELINE = "torch-pil-bilinear"
SHARD_BASELINE = "webdataset-pil-bilinear"  # the baseline when the source is WebDataset shards
FLOOR = "decode-only"
LEARNED = ("dali-learned", "dali-learned-train")


@dataclass
class Config:
    data: str | None = None
    batch_size: int = 32
    size: int = 224
    input_size: int = 448
    threads: list[int] = field(default_factory=lambda: [len(os.sched_getaffinity(0))])
    megapixels: list[float] | None = None
    device: str = "auto"
    repeats: int = 3
    contenders: list[str] | None = None
    backbone: str | None = None
    learned_images: int | None = None
    sweep_images: int = 128
    images: int | None = None
    json: str | None = None
    plot: str | None = None
    as_shards: bool = False


# -- process-tree accounting --------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        try:
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
        i += 1
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def _pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except (OSError, StopIteration):
            pass
    return total


class TreeMonitor:
    """Samples the peak memory (PSS) of this process and its workers, and on CUDA the device's memory in
    use, in a background thread."""

    def __init__(self, interval: float = 0.05, device: torch.device | None = None) -> None:
        self.interval, self.peak, self.gpu_peak, self.device = interval, 0, 0, device
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        self.peak = max(self.peak, _pss_bytes(_tree(os.getpid())))
        if self.device is not None and self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            self.gpu_peak = max(self.gpu_peak, total - free)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMonitor:
        self.sample()  # (a pass shorter than the thread's first turn still has its figures)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# -- contenders ---------------------------------------------------------------------------------------
# Each factory returns ``epoch() -> iterator of batch sizes`` (one pass); the batches are finished (on the
# device, at the output size, backward done) when their size is yielded.


def _pil_transform(cfg: Config, interpolation: str, recipe: bool = False):
    """RandomResizedCrop, flip, to tensor, Normalize; ``recipe``: with the reference script's
    TrivialAugmentWide and RandomErasing(0.25) (``--auto-augment ta_wide --random-erase 0.25``)."""
    from torchvision import transforms

    mode = transforms.InterpolationMode(interpolation)
    return transforms.Compose([
        transforms.RandomResizedCrop(cfg.size, interpolation=mode),
        transforms.RandomHorizontalFlip(),
        *([transforms.TrivialAugmentWide(interpolation=mode)] if recipe else []),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        *([transforms.RandomErasing(p=0.25)] if recipe else []),
    ])


def _epochs(loader: Iterable, device: torch.device, step: Callable | None = None,
            mix: Callable | None = None) -> Callable:
    """``epoch()`` over ``loader``: batches moved to ``device`` (then through ``mix``, a batch transform,
    and ``step``), sizes yielded."""

    def epoch() -> Iterator[int]:
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if mix is not None:
                images, labels = mix(images, labels)
            if step is not None:
                step(images, labels)
            yield images.shape[0]

    return epoch


def torch_pil(cfg: Config, data: str, threads: int, device: torch.device, interpolation: str, recipe: bool = False):
    from torchvision import datasets

    dataset = datasets.ImageFolder(data, transform=_pil_transform(cfg, interpolation, recipe))
    mix = None
    if recipe:  # torchvision's v2.MixUp / v2.CutMix, one of the two per batch, on the device (the reference's)
        from torchvision.transforms import v2

        num_classes = len(dataset.classes)
        mix = v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=num_classes),
                               v2.CutMix(alpha=1.0, num_classes=num_classes)])
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=threads,
        persistent_workers=True,
        pin_memory=device.type == "cuda",
    )
    return _epochs(loader, device, mix=mix)


def webdataset_pil(cfg: Config, data: str, threads: int, device: torch.device, interpolation: str):
    import webdataset as wds

    from dali_resizer.readers import open_source

    transform = _pil_transform(cfg, interpolation)
    shards = open_source(data).paths
    dataset = (
        wds.WebDataset(shards, shardshuffle=len(shards), empty_check=False)
        .shuffle(1000)
        .decode("pil")
        .to_tuple("jpg;jpeg;png;webp", "cls")
        .map_tuple(transform, int)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, num_workers=threads,
                                         persistent_workers=True, pin_memory=device.type == "cuda")
    return _epochs(loader, device)


#: the augmentation contenders' loader arguments, and whether MixUp/CutMix mixes their batches
AUGMENTED = {
    "dali-bilinear-ta-wide": (dict(auto_augment="ta_wide"), False),
    "dali-bilinear-ra": (dict(auto_augment="ra", ra_magnitude=9), False),
    "dali-bilinear-erase": (dict(random_erase=0.25), False),
    "dali-bilinear-mix": ({}, True),
    "dali-bilinear-recipe": (dict(auto_augment="ta_wide", random_erase=0.25), True),
}
#: each augmentation contender's plain pipeline, the base of its "vs plain" ratio
PLAIN = {**dict.fromkeys(AUGMENTED, "dali-bilinear"), "torch-pil-bilinear-recipe": "torch-pil-bilinear"}


def dali(cfg: Config, data: str, threads: int, device: torch.device, stage: str | None,
         augment: dict | None = None, mix: bool = False):
    """``stage``: None (DALI to the output size), "forward", "train" (resizer backward) or a backbone name.
    ``augment``: augmentation arguments for the loader; ``mix``: MixUp/CutMix on each delivered batch.

    The resizer runs as README trains it: channels_last batches and module, and on CUDA under bf16
    autocast."""
    channels_last = stage is not None
    loader = DALILoader(data, batch_size=cfg.batch_size, shuffle=True, size=cfg.input_size if stage else cfg.size,
                        num_threads=threads, device=device,
                        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
                        cache=False,  # (objects read in place: benchmarks/object_storage.py measures the cache)
                        **(augment or {}))
    mixer = None
    if mix:
        mixer = MixUpCutMix(len(loader.classes) if loader.classes else 1000, mixup_alpha=0.2, cutmix_alpha=1.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    step: Callable[[torch.Tensor, torch.Tensor], None] | None = None
    if stage == "forward":
        resizer = LearnableResizer(cfg.size).to(device, memory_format=torch.channels_last).eval()

        def step(images, labels):
            with torch.inference_mode(), autocast:
                resizer(images)
    elif stage == "train":
        resizer = LearnableResizer(cfg.size).to(device, memory_format=torch.channels_last).train()

        def step(images, labels):
            with autocast:
                out = resizer(images)
            out.float().square().mean().backward()
    elif stage is not None:
        import torchvision

        backbone = torchvision.models.get_model(stage, num_classes=len(loader.classes) if loader.classes else 1000)
        model = torch.nn.Sequential(LearnableResizer(cfg.size), backbone).to(device, memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
        criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

        def step(images, labels):
            with autocast:
                loss = criterion(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return _epochs(loader, device, step, mix=mixer)


class _EncodedFiles(torch.utils.data.Dataset):
    """An image folder's files as encoded bytes and labels, for GPU decoding."""

    def __init__(self, data: str) -> None:
        from dali_resizer.readers import ImageFolderSource

        source = ImageFolderSource.scan(data)
        self.files, self.labels = source.files, source.labels.tolist()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        # (bytes, not tensors: a batch of many small tensors from the workers costs a shared-memory
        # file descriptor each, which runs out)
        with open(self.files[i], "rb") as f:
            return f.read(), self.labels[i]


def torchvision_decode(cfg: Config, data: str, threads: int, device: torch.device):
    """What a user would pick instead on a GPU: DataLoader workers read the files, then
    ``torchvision.io.decode_jpeg(device=...)`` decodes the batch (nvJPEG on CUDA), and torchvision's
    v2 transforms crop, resize (bilinear, antialiased), flip and normalize each image on the device."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(cfg.size, antialias=True), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    loader = torch.utils.data.DataLoader(_EncodedFiles(data), batch_size=cfg.batch_size, shuffle=True,
                                         num_workers=threads, persistent_workers=True,
                                         collate_fn=lambda batch: tuple(zip(*batch)))

    def epoch() -> Iterator[int]:
        for encoded, labels in loader:
            encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
            batch = torch.stack([transform(image) for image in images])
            labels = torch.tensor(labels).to(device, non_blocking=True)
            yield batch.shape[0]

    return epoch


def decode_only(cfg: Config, data: str, threads: int, device: torch.device, fancy: bool = True):
    import pipelines
    from dali_resizer.readers import ImageFolderSource, open_source

    source = open_source(data)
    device_id = None if device.type == "cpu" else (device.index or 0)
    options = dict(decoder=pipelines.decoder_device(device_id), batch_size=cfg.batch_size, num_threads=threads,
                   device_id=device_id, decoder_options={"jpeg_fancy_upsampling": fancy})

    def epoch() -> Iterator[int]:
        if isinstance(source, ImageFolderSource):
            pipe = pipelines.decode_only_pipeline(source.files, **options)
        else:
            pipe = pipelines.webdataset_decode_only_pipeline(source.paths, source.index_paths, **options)
        pipe.build()
        total = len(source)
        for start in range(0, total, cfg.batch_size):
            pipe.run()  # on CUDA, measure() synchronizes the device before it stops the clock
            yield min(cfg.batch_size, total - start)
        del pipe

    return epoch


def contenders(cfg: Config, shards: bool = False) -> dict[str, Callable]:
    if shards:
        table = {"webdataset-pil-bilinear": lambda d, t, dev: webdataset_pil(cfg, d, t, dev, "bilinear")}
    else:
        table = {
            "torch-pil-bilinear": lambda d, t, dev: torch_pil(cfg, d, t, dev, "bilinear"),
            "torch-pil-bicubic": lambda d, t, dev: torch_pil(cfg, d, t, dev, "bicubic"),
        }
    table |= {
        "dali-bilinear": lambda d, t, dev: dali(cfg, d, t, dev, None),
        "dali-learned": lambda d, t, dev: dali(cfg, d, t, dev, "forward"),
        "dali-learned-train": lambda d, t, dev: dali(cfg, d, t, dev, "train"),
        "decode-only": lambda d, t, dev: decode_only(cfg, d, t, dev),
    }
    for name, (augment, mix) in AUGMENTED.items():
        table[name] = lambda d, t, dev, augment=augment, mix=mix: dali(cfg, d, t, dev, None, augment, mix)
    if not shards:
        table["torch-pil-bilinear-recipe"] = lambda d, t, dev: torch_pil(cfg, d, t, dev, "bilinear", recipe=True)
    if not shards:  # (reads an image folder's files)
        table["torchvision-decode-jpeg"] = lambda d, t, dev: torchvision_decode(cfg, d, t, dev)
    if cfg.device != "cpu" and torch.cuda.is_available():  # nvJPEG's chroma upsampling as libjpeg-turbo's, or not
        table["decode-only-plain-upsampling"] = lambda d, t, dev: decode_only(cfg, d, t, dev, fancy=False)
    if cfg.backbone:
        table[f"dali-learned-{cfg.backbone}-train"] = lambda d, t, dev: dali(cfg, d, t, dev, cfg.backbone)
    return table


# -- measurement --------------------------------------------------------------------------------------


def measure(name: str, epoch: Callable, device: torch.device, repeats: int, limit: int | None,
            expected: int) -> dict:
    """One warm-up pass, then ``repeats`` timed passes; the device is synchronized inside the timing."""
    seconds, cpu, images = [], [], 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with TreeMonitor(device=device) as monitor:
        for rep in range(repeats + 1):
            label = "warm-up" if rep == 0 else f"run {rep}/{repeats}"
            total = expected if limit is None else min(limit, expected)  # (for the progress bar)
            count = 0
            bar = ProgressBar(total, f"  {name:<28} {label:<9}", unit="img")
            # The pass's first batch comes before the clock starts: building the pipeline (DALI builds one
            # per shuffled epoch), starting workers and the first decode are start-up, not throughput.
            batches = epoch()
            untimed = next(batches, 0)
            bar.update(untimed)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            pids = _tree(os.getpid())
            cpu0 = _cpu_seconds(pids)
            start = time.perf_counter()
            for n in batches:
                count += n
                bar.update(n)
                if limit is not None and count >= limit:  # (--learned-images: timed images per pass)
                    break
            batches.close()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            bar.close(clear=True)
            cpu1 = _cpu_seconds(pids + [p for p in _tree(os.getpid()) if p not in pids])
            if rep:
                seconds.append(elapsed)
                cpu.append((cpu1 - cpu0) / count)
                images = count
        peak = monitor.peak
    rates = [images / s for s in seconds]
    print(f"  {name:<28} {statistics.median(rates):9.1f} img/s ({images} images x {repeats})", file=sys.stderr,
          flush=True)
    return {
        "name": name,
        "images": images,
        "seconds": seconds,
        "images_per_s": statistics.median(rates),
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "cpu_s_per_image": statistics.median(cpu),
        "untimed_first_batch": untimed,
        "peak_host_mib": peak / 2**20,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        # the device's memory in use (cudaMemGetInfo): DALI's pools, nvJPEG's buffers and torch's cache too
        "peak_gpu_used_mib": monitor.gpu_peak / 2**20 if device.type == "cuda" else None,
    }


def run_case(cfg: Config, data: str, threads: int, device: torch.device, names: list[str]) -> list[dict]:
    from dali_resizer.readers import ShardSource, open_source

    source = open_source(data)
    shards = isinstance(source, ShardSource)
    expected, table = len(source), contenders(cfg, shards)
    baseline = SHARD_BASELINE if shards else BASELINE
    names = [SHARD_BASELINE if shards and n == BASELINE else n for n in names if n in table or n == BASELINE]
    names = list(dict.fromkeys(names))  # the shard baseline may be asked for by both names
    torch.set_num_threads(threads)
    rows = []
    for name in names:
        limit = cfg.learned_images if (name in LEARNED or name.startswith("dali-learned-")) else None
        epoch = table[name](data, threads, device)
        rows.append(measure(name, epoch, device, cfg.repeats, limit, expected))
        del epoch
        gc.collect()
    base = next((r["images_per_s"] for r in rows if r["name"] == baseline), None)
    floor = next((r["images_per_s"] for r in rows if r["name"] == FLOOR), None)
    rate = {r["name"]: r["images_per_s"] for r in rows}
    for r in rows:
        r["ratio_to_baseline"] = r["images_per_s"] / base if base else None
        r["efficiency_vs_decode"] = r["images_per_s"] / floor if floor else None
        r["baseline"] = baseline
        if r["name"] in PLAIN:  # an augmentation's cost: against the same pipeline without it, this run
            r["plain"] = PLAIN[r["name"]]
            r["ratio_to_plain"] = r["images_per_s"] / rate[r["plain"]] if r["plain"] in rate else None
    return rows


def _local_copy(url: str) -> Path:
    """Every object under ``url`` copied once into the cache, the layout kept (indexes written after
    their tars, so they read as current)."""
    import hashlib

    from dali_resizer.readers import default_cache_dir
    from dali_resizer.storage import storage_for

    storage = storage_for(url)
    out = default_cache_dir() / "s3-copies" / hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
    if (out / ".complete").is_file():
        return out
    prefix = url.rstrip("/") + "/"
    keys = sorted(storage.files(url.rstrip("/")), key=lambda k: (k.endswith(".idx"), k.endswith("manifest.json"), k))
    print(f"copying {len(keys)} objects of {url} into {out} ...", file=sys.stderr, flush=True)
    for key in keys:
        target = out / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read(key))
    (out / ".complete").write_text(url)
    return out


def s3_against_local(rows: list[dict]) -> list[dict]:
    """Per contender measured over both: images/s over S3, over the local copy, and their ratio."""
    by = {(r["data_label"], r["threads"], r["name"]): r["images_per_s"] for r in rows}
    pairs = []
    for r in rows:
        if r.get("storage") == "s3" and (r["data_label"][:-3] + "-local", r["threads"], r["name"]) in by:
            local = by[(r["data_label"][:-3] + "-local", r["threads"], r["name"])]
            pairs.append({"name": r["name"], "threads": r["threads"], "s3_images_per_s": r["images_per_s"],
                          "local_images_per_s": local, "s3_to_local": r["images_per_s"] / local})
    return pairs


def _as_shards(folder: str) -> Path:
    """The folder written as shards of 64 samples, once, into the cache."""
    from dali_resizer.readers import default_cache_dir
    from dali_resizer.shards import write_shards

    out = default_cache_dir() / f"shards-{Path(folder).resolve().name}"
    if not (out / "classes.txt").is_file():  # written last
        print(f"writing {folder} as shards into {out} ...", file=sys.stderr, flush=True)
        write_shards(folder, out, samples_per_shard=64)
    return out


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


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    header = (f"{'data':<16} {'thr':>3} {'contender':<28} {'img/s':>8} {'spread':>13} {'vs baseline':>11} "
              f"{'vs decode':>9} {'vs plain':>8} {'cpu ms/img':>10} {'host MiB':>8} {'gpu MiB':>8}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        spread = f"{r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f}"
        print(f"{r['data_label']:<16} {r['threads']:>3} {r['name']:<28} {r['images_per_s']:8.1f} {spread:>13} "
              f"{_fmt(r['ratio_to_baseline'], '.2f'):>10}x {_fmt(r['efficiency_vs_decode'], '.2f'):>9} "
              f"{_fmt(r.get('ratio_to_plain'), '.2f'):>7}x "
              f"{1000 * r['cpu_s_per_image']:10.1f} {r['peak_host_mib']:8.0f} {_fmt(r['peak_gpu_mib'], '.0f'):>8}")


def plot(rows: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]'") from None
    fig, (ax_mp, ax_thr) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(dict.fromkeys(r["name"] for r in rows))
    max_threads = max(r["threads"] for r in rows)
    first_data = rows[0]["data_label"]
    for name in names:
        mine = [r for r in rows if r["name"] == name]
        by_mp = sorted((r["megapixels"], r["images_per_s"]) for r in mine
                       if r["threads"] == max_threads and r["megapixels"] is not None)
        if by_mp:
            ax_mp.plot(*zip(*by_mp), marker="o", label=name)
        by_thr = sorted((r["threads"], r["images_per_s"]) for r in mine if r["data_label"] == first_data)
        ax_thr.plot(*zip(*by_thr), marker="o", label=name)
    mps = sorted({r["megapixels"] for r in rows if r["megapixels"] is not None})
    ax_mp.set(xscale="log", yscale="log", xlabel="megapixels per image", ylabel="images/s",
              title=f"{max_threads} threads")
    ax_mp.set_xticks(mps or [1], [f"{m:g}" for m in mps or [1]])
    ax_mp.minorticks_off()
    ax_thr.set(yscale="log", xlabel="CPU threads / workers", ylabel="images/s", title=first_data)
    threads = sorted({r["threads"] for r in rows})
    ax_thr.set_xticks(threads, [str(t) for t in threads])
    ax_thr.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None = None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="image folder or WebDataset shards (folder of .tar, brace pattern); "
                   "default: the embedded synthetic set, generated on first use")
    p.add_argument("--as-shards", action="store_true",
                   help="write the image folder(s) as WebDataset shards (cached) and measure those instead")
    p.add_argument("--megapixels", type=float, nargs="+",
                   help="instead of --data: synthetic sets of images of these sizes (4:3), e.g. 0.25 1 4")
    p.add_argument("--threads", type=int, nargs="+", default=d.threads,
                   help="DataLoader workers = DALI threads = torch threads; several values sweep (default: all cores)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--size", type=int, default=d.size, help="output size fed to the backbone")
    p.add_argument("--input-size", type=int, default=d.input_size, help="working size fed to the learnable resizer")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed passes per contender, after one warm-up")
    p.add_argument("--contenders", nargs="+", help="subset to run (default: all)")
    p.add_argument("--backbone", help="also time a full training step with this torchvision model, e.g. resnet50")
    p.add_argument("--learned-images", type=int,
                   help="images per pass for contenders that run the resizer (default: 64 on CPU, all on CUDA)")
    p.add_argument("--sweep-images", type=int, default=d.sweep_images, help="images per --megapixels set")
    p.add_argument("--images", type=int,
                   help="images in the embedded synthetic set (default: its 320); a GPU needs thousands")
    p.add_argument("--json", help="write all figures, versions and the machine to this file")
    p.add_argument("--plot", help="write a PNG of images/s against megapixels and threads (needs matplotlib)")
    return Config(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if cfg.learned_images is None and device.type == "cpu":
        cfg.learned_images = 64  # the resizer at 448 runs at ~10 img/s on 2 CPU cores
    known = list(contenders(cfg)) + [SHARD_BASELINE]
    names = cfg.contenders or known
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; choose from {known}")

    if cfg.megapixels:
        cases = []
        for mp in cfg.megapixels:
            long_side = round(math.sqrt(mp * 1e6 * 4 / 3))
            per_class = max(1, math.ceil(cfg.sweep_images / 8))
            print(f"synthetic set: {mp} MP ...", file=sys.stderr, flush=True)
            cases.append((f"synth-{mp:g}MP", mp,
                          str(make_synthetic_folder(num_classes=8, images_per_class=per_class,
                                                    min_side=long_side, max_side=long_side))))
    elif cfg.data and cfg.data.startswith("s3://"):
        label = cfg.data.rstrip("/").rsplit("/", 1)[-1]
        cases = [(f"{label}-local", None, str(_local_copy(cfg.data))), (f"{label}-s3", None, cfg.data)]
    elif cfg.data:
        cases = [(Path(cfg.data).name, None, cfg.data)]
    else:
        print("embedded synthetic set (generated on first use) ...", file=sys.stderr, flush=True)
        extra = {} if cfg.images is None else {"images_per_class": max(1, math.ceil(cfg.images / 10))}
        cases = [("synthetic", None, str(make_synthetic_folder(**extra)))]

    if cfg.as_shards:
        cases = [(f"{label}-shards", mp, str(_as_shards(data))) for label, mp, data in cases]
    env = environment(device)
    print(f"device={device} cpu={env['cpu']!r} cores={env['cores']} gpu={env['gpu']!r}", file=sys.stderr)
    rows = []
    for label, mp, data in cases:
        for threads in cfg.threads:
            print(f"{label}, {threads} thread(s):", file=sys.stderr, flush=True)
            on_s3 = data.startswith("s3://")
            # (over S3: DALI's own readers only; the torch contenders and the baseline run on the local copy)
            here = [n for n in names if n.startswith("dali") or n == FLOOR] if on_s3 else names
            for r in run_case(cfg, data, threads, device, here):
                rows.append({"data_label": label, "data": data, "megapixels": mp, "threads": threads,
                             "storage": "s3" if on_s3 else "local", **r})

    print_table(rows)
    report = {"config": asdict(cfg), "environment": env, "floor": FLOOR, "results": rows}
    if any(r["storage"] == "s3" for r in rows):
        report["s3_against_local"] = pairs = s3_against_local(rows)
        print("\nS3 against the local copy (same objects, same run):")
        for p in pairs:
            print(f"  {p['name']:<28} threads {p['threads']:>2}  S3 {p['s3_images_per_s']:8.1f} img/s  "
                  f"local {p['local_images_per_s']:8.1f} img/s  S3/local {p['s3_to_local']:.2f}")
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(report, indent=2))
    if cfg.plot:
        plot(rows, cfg.plot)
    return report


if __name__ == "__main__":
    main()
