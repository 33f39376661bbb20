import copy

import pytest
import torch

from dali_resizer import LearnableResizer
from tests.conftest import load_benchmark


def outputs_and_grads(module, x):
    x = x.detach().requires_grad_(True)
    y = module(x)
    y.square().mean().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


def test_checkpointed_stem_equals_the_reference():
    bench = load_benchmark("resizer")
    torch.manual_seed(0)
    reference = LearnableResizer(9, memory_efficient=False)
    x = torch.randn(2, 3, 23, 19)
    y0, gx0, gp0 = outputs_and_grads(reference, x)
    for variant, inp in ((bench.CheckpointedStem(copy.deepcopy(reference)), x),
                         (copy.deepcopy(reference).to(memory_format=torch.channels_last),
                          x.to(memory_format=torch.channels_last))):
        y, gx, gp = outputs_and_grads(variant, inp)
        torch.testing.assert_close(y, y0, rtol=0, atol=1e-4)
        torch.testing.assert_close(gx, gx0, rtol=0, atol=1e-4)
        for name, g in gp0.items():
            torch.testing.assert_close(gp.get(name, gp.get("resizer." + name)), g, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_benchmark_reports_every_row(tmp_path):
    rows = load_benchmark("resizer").main(["--batch-size", "2", "--input-sizes", "32", "--size", "16", "--repeats", "1",
                        "--precisions", "fp32", "--json", str(tmp_path / "r.json")])
    names = [r["name"] for r in rows]
    assert names == ["interpolate", "muller", "resizer", "resizer-cl", "resizer-ckpt", "resizer-memory-efficient",
                     "resizer-kernels", "resizer-inference", "resnet50"]
    by = {r["name"]: r for r in rows}
    assert by["resnet50"]["train_vs_resnet50"] == 1.0 and by["resizer"]["train_vs_resnet50"] > 0
    assert by["resizer-ckpt"]["saved_mib_per_image"] < by["resizer"]["saved_mib_per_image"]
    assert by["resizer-memory-efficient"]["saved_mib_per_image"] < 0.5 * by["resizer"]["saved_mib_per_image"]
    assert by["resizer"]["train_gflop_per_image"] > 0 and by["resizer"]["train_ms"] > 0
    assert 0 < by["muller"]["train_gflop_per_image"] < 0.1 * by["resizer"]["train_gflop_per_image"]
    # the kernel's FLOPs are counted on the plain module (the counter does not see inside the kernel)
    assert by["resizer-kernels"]["train_gflop_per_image"] == by["resizer"]["train_gflop_per_image"]
    assert by["resizer-kernels"]["saved_mib_per_image"] < 0.6 * by["resizer"]["saved_mib_per_image"]
    assert by["resizer-inference"]["forward_ms"] > 0 and by["resizer-inference"]["train_ms"] is None  # forward only
