"""What the learnable resizer costs next to the backbone it feeds.

    python benchmarks/resizer.py                        # 448 -> 224, batch 32, fp32 and bf16, this device
    python benchmarks/resizer.py --input-sizes 448 896 --num-res-blocks 1 2 --json results/resizer.json

Rows, all timed in the same run (warm-up, then the median of --repeats, device synchronized):
    interpolate          F.interpolate(bilinear) 448 -> 224, the fixed resize it replaces
    muller               MullerResizer(): the multilayer Laplacian resizer (Tu et al., 2 layers, 4 parameters)
    resizer              LearnableResizer(): the plain (reference) module
    resizer-cl           the same in channels_last
    resizer-ckpt         the same with the stem (7x7 conv ... BN at input resolution) recomputed in
                         backward (torch.utils.checkpoint) instead of storing its full-resolution maps
    resizer-memory-efficient  LearnableResizer(memory_efficient=True) in channels_last: the
                         stem a few images at a time, its BatchNorm folded through the resize, recomputed
                         in backward by a custom autograd function
    resizer-kernels      LearnableResizer(cpu_kernels=True) in channels_last (CPU only): the stem after its
                         7x7 convolution in the C++ kernel of dali_resizer/csrc/stem.cpp, which also
                         takes that convolution's weight gradient, and the output-resolution
                         BatchNorms with their LeakyReLU or residual addition in csrc/batchnorm.cpp
    resizer-inference    LearnableResizer.for_inference() in channels_last: BatchNorms folded into the
                         convolutions, the stem's applied after the resize (forward only)
    resizer-compiled     torch.compile of the channels_last module (inductor; opt-in with --rows, it
                         compiles for a minute or more on a small CPU)
    resnet50             torchvision ResNet-50 at the output size: the yardstick of every ratio
Per row: forward and forward+backward ms per batch, the ratio to ResNet-50's (the median of per-pair
ratios, the row and ResNet-50 timed alternately, since this kind of machine drifts), achieved GFLOP/s
(FLOPs from torch.utils.flop_counter, counted on the plain module for resizer-kernels, whose kernel
the counter does not see), and the activations kept for backward per image (MiB): the
training memory the module adds.

--keep-freed-memory raises glibc's mmap threshold (mallopt) before anything is allocated, so that
freed large tensors stay in the heap instead of being unmapped and faulted in again, page by page, at
their next allocation; it applies to every row, ResNet-50 included.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dali_resizer import LearnableResizer, MullerResizer  # noqa: E402
from dali_resizer.resizer import resize  # noqa: E402


class Interpolate(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = (size, size)

    def forward(self, x):
        return resize(x, self.size)


class CheckpointedStem(nn.Module):
    """The reference resizer with its input-resolution stem recomputed in backward."""

    def __init__(self, resizer: LearnableResizer) -> None:
        super().__init__()
        self.resizer = resizer

    def forward(self, x):
        r = self.resizer
        skip = r._resize(x)
        f = checkpoint(lambda t: r._resize(r.stem(t)), x, use_reentrant=False)
        return r.head(r.merge(r.res_blocks(f)) + f) + skip


def saved_bytes(module: nn.Module, x: torch.Tensor, autocast) -> int:
    """Bytes of the activations autograd keeps for backward (each storage once; the input and the
    parameters, which exist anyway, left out)."""
    seen = {p.untyped_storage().data_ptr() for p in module.parameters()} | {x.untyped_storage().data_ptr()}
    total = 0

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        module(x)
    return total


def flops(module: nn.Module, x: torch.Tensor, train: bool) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        y = module(x)
        if train and y.requires_grad:
            y.float().sum().backward()
    return counter.get_total_flops()


def _once(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def timed(fn, device: torch.device, repeats: int, against=None) -> tuple[float, float | None]:
    """Median seconds of ``fn`` (after a warm-up) and, with ``against``, the median of the per-pair
    ratios ``fn / against`` timed alternately: the machine's speed drifts over minutes, and a pair
    shares the drift."""
    fn()
    if against is not None:
        against()
    times, ratios = [], []
    for _ in range(repeats):
        times.append(_once(fn, device))
        if against is not None:
            ratios.append(times[-1] / _once(against, device))
    return statistics.median(times), (statistics.median(ratios) if ratios else None)


def steps(module, x, dtype):
    """(forward, training step) closures of ``module`` on ``x`` under autocast to ``dtype``."""
    autocast = torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None)
    xg = x.detach()  # as in training: the images need no gradient, so the first conv skips its input grad

    def forward():
        with torch.no_grad(), autocast:
            module(x)

    def train():
        module.zero_grad(set_to_none=True)
        with autocast:
            out = module(xg)
        if out.requires_grad:  # (a parameter-free resize has nothing to train)
            out.float().sum().backward()

    return forward, train


def measure(name, module, x, device, dtype, repeats, train_too: bool = True, baseline=None, flop_module=None) -> dict:
    """Times of one row; with ``baseline`` (ResNet-50's forward and training closures), its ratios to
    them, each timed in alternation with the row. ``flop_module``: count FLOPs on it instead (the same
    computation, in operations the counter sees)."""
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    forward, train = steps(module, x, dtype)
    fwd, fwd_ratio = timed(forward, device, repeats, baseline[0] if baseline else None)
    row = {"name": name, "forward_ms": 1000 * fwd, "forward_vs_resnet50": fwd_ratio, "train_ms": None,
           "train_vs_resnet50": None, "train_gflops_per_s": None, "train_gflop_per_image": None,
           "saved_mib_per_image": None}
    if not train_too:
        return row
    fwd_bwd, train_ratio = timed(train, device, repeats, baseline[1] if baseline else None)
    xg = x.detach()
    with autocast:
        f_train = flops(flop_module if flop_module is not None else module, xg, train=True)
    return row | {"train_ms": 1000 * fwd_bwd, "train_vs_resnet50": train_ratio,
                  "train_gflops_per_s": f_train / fwd_bwd / 1e9, "train_gflop_per_image": f_train / x.shape[0] / 1e9,
                  "saved_mib_per_image": saved_bytes(module, xg, autocast) / x.shape[0] / 2**20}


def keep_freed_memory() -> bool:
    """glibc: serve large allocations from the heap and never trim it (M_MMAP_THRESHOLD 1 GiB,
    M_TRIM_THRESHOLD 2 GiB), as a caching allocator would; True when glibc accepted both."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input-sizes", type=int, nargs="+", default=[448])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--num-res-blocks", type=int, nargs="+", default=[1])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", nargs="+",
                   default=["interpolate", "muller", "resizer", "resizer-cl", "resizer-ckpt",
                            "resizer-memory-efficient", "resizer-kernels", "resizer-inference", "resnet50"])
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc mallopt: keep freed large tensors in the heap (no page faults on reuse)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.keep_freed_memory and not keep_freed_memory():
        p.error("--keep-freed-memory: glibc's mallopt is not available here")
    import torchvision

    device = torch.device(a.device)
    rows = []
    for precision in a.precisions:
        dtype = torch.bfloat16 if precision == "bf16" else None
        resnet = torchvision.models.resnet50().to(device, memory_format=torch.channels_last)
        x_out = torch.randn(a.batch_size, 3, a.size, a.size, device=device).to(memory_format=torch.channels_last)
        base = measure("resnet50", resnet, x_out, device, dtype, a.repeats) if "resnet50" in a.rows else None
        baseline = steps(resnet, x_out, dtype) if base is not None else None
        for input_size in a.input_sizes:
            x = torch.randn(a.batch_size, 3, input_size, input_size, device=device)
            for blocks in a.num_res_blocks:
                torch.manual_seed(0)
                reference = LearnableResizer(a.size, num_res_blocks=blocks, memory_efficient=False).to(device)
                efficient = copy.deepcopy(reference)
                efficient.memory_efficient = True
                variants = {
                    "interpolate": (Interpolate(a.size), x),
                    "muller": (MullerResizer(a.size).to(device), x),
                    "resizer": (reference, x),
                    "resizer-cl": (copy.deepcopy(reference).to(memory_format=torch.channels_last),
                                   x.to(memory_format=torch.channels_last)),
                    "resizer-ckpt": (CheckpointedStem(reference), x),
                    "resizer-memory-efficient": (efficient.to(memory_format=torch.channels_last),
                                      x.to(memory_format=torch.channels_last)),
                    "resizer-inference": (reference.for_inference().to(memory_format=torch.channels_last),
                                          x.to(memory_format=torch.channels_last)),
                }
                if device.type == "cpu":  # (elsewhere cpu_kernels runs the plain path)
                    kernel = copy.deepcopy(reference).to(memory_format=torch.channels_last)
                    kernel.cpu_kernels = True
                    variants["resizer-kernels"] = (kernel, x.to(memory_format=torch.channels_last))
                if "resizer-compiled" in a.rows:
                    variants["resizer-compiled"] = (torch.compile(copy.deepcopy(reference).to(
                        memory_format=torch.channels_last)), x.to(memory_format=torch.channels_last))
                for name in [r for r in a.rows if r in variants]:
                    if name in ("interpolate", "muller") and blocks != a.num_res_blocks[0]:
                        continue
                    module, inp = variants[name]
                    row = measure(name, module, inp, device, dtype, a.repeats, train_too=name != "resizer-inference",
                                  baseline=baseline, flop_module=reference if name == "resizer-kernels" else None)
                    row |= {"precision": precision, "input_size": input_size, "num_res_blocks": blocks}
                    rows.append(row)
                    print(f"  {precision} {input_size} r={blocks} {name}: forward {row['forward_ms']:.0f} ms"
                          + (f", train {row['train_ms']:.0f} ms" if row["train_ms"] is not None else ""),
                          file=sys.stderr, flush=True)
        if base is not None:
            base |= {"precision": precision, "input_size": a.size, "num_res_blocks": None,
                     "forward_vs_resnet50": 1.0, "train_vs_resnet50": 1.0}
            rows.append(base)

    print(f"\n{a.device}, batch {a.batch_size}, output {a.size}")
    print(f"{'prec':<5} {'in':>4} {'r':>2} {'row':<13} {'fwd ms':>8} {'fwd/R50':>8} {'train ms':>9} {'train/R50':>9} "
          f"{'GFLOP/s':>8} {'GFLOP/img':>9} {'saved MiB/img':>13}")

    def num(value, spec):
        return "-" if value is None else format(value, spec)

    for r in rows:
        print(f"{r['precision']:<5} {r['input_size']:>4} {num(r['num_res_blocks'], 'd'):>2} {r['name']:<13} "
              f"{r['forward_ms']:8.1f} {num(r.get('forward_vs_resnet50'), '.2f'):>8} {num(r['train_ms'], '.1f'):>9} "
              f"{num(r.get('train_vs_resnet50'), '.2f'):>9} {num(r['train_gflops_per_s'], '.1f'):>8} "
              f"{num(r['train_gflop_per_image'], '.2f'):>9} {num(r['saved_mib_per_image'], '.1f'):>13}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"device": a.device, "batch_size": a.batch_size, "rows": rows,
                                            "keep_freed_memory": a.keep_freed_memory, "torch": torch.__version__,
                                            "threads": torch.get_num_threads()}, indent=2))
    return rows


if __name__ == "__main__":
    main()
