"""``LearnableResizer(cpu_kernels=True)`` (the C++ kernels of ``dali_resizer/csrc/``) against the plain
module on the same weights, and the BatchNorm kernel against PyTorch's. The kernels are compiled on first
use (about a minute on 2 cores)."""

import copy
import shutil

import pytest
import torch

from dali_resizer import LearnableResizer, kernels
from dali_resizer.kernels import bn_act
from tests.conftest import (
    assert_double_backward_raises,
    assert_evaluation_equal,
    assert_statistics_hold_when_the_mean_dwarfs_the_spread,
    relative_error,
    resizer_pair,
    saved_bytes,
)
from tests.conftest import training_step as step

pytestmark = [
    pytest.mark.skipif(shutil.which("ninja") is None or shutil.which("c++") is None,
                       reason="the CPU kernels are compiled with c++ and ninja, not found here"),
    pytest.mark.slow,  # (the first test compiles the kernels)
]


def cpu_has_amx() -> bool:
    """AMX tiles with bf16 (Linux reports them in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_tile" in flags and "amx_bf16" in flags


def bn_act_reference(x, bn, slope=1.0, residual=None):
    """PyTorch's ops for what kernels.bn_act computes."""
    y = bn(x)
    if slope != 1.0:
        y = torch.nn.functional.leaky_relu(y, slope)
    return y if residual is None else y + residual


def pair(size, **kwargs):
    """(reference, cpu_kernels) resizers with the same weights."""
    return resizer_pair(size, {"cpu_kernels": True}, **kwargs)


def test_kernel_builds_here():
    module = kernels.load()
    for name in ("stem_forward", "stem_backward", "bn_stats", "bn_forward", "bn_backward"):
        assert hasattr(module, name), name


@pytest.mark.skipif(not cpu_has_amx(), reason="this CPU has no AMX tiles: both calls would take the FMA path")
@pytest.mark.parametrize(("shape", "pool"), [((2, 40, 37), False), ((3, 16, 64), True), ((1, 9, 5), False)])
def test_amx_weight_gradient_equals_the_fma_one(shape, pool):
    """bf16, 16 channels: the 7x7 convolution's weight gradient on AMX tiles against the FMA path,
    within bf16 rounding of the gradient; every other output identical. A bf16 oneDNN convolution
    afterwards (AMX too) still gives the same result: the kernel leaves the thread's tile
    configuration as it found it."""
    kernel = kernels.load()
    torch.manual_seed(0)
    n, h, w = shape
    t = torch.randn(n, h, w, 16).bfloat16()
    x = torch.randn(n, h, w, 3).bfloat16()
    g = torch.randn(n, h // 2 if pool else h, w // 2 if pool else w, 16).bfloat16()
    w2, b2 = torch.randn(16, 16) * 0.2, torch.randn(16) * 0.1
    slope_d, offset_d = torch.randn(16) * 0.01, torch.randn(16) * 0.01
    conv_in = torch.randn(2, 64, 20, 20).bfloat16().contiguous(memory_format=torch.channels_last)
    conv_w = torch.randn(64, 64, 3, 3).bfloat16()
    before = torch.nn.functional.conv2d(conv_in, conv_w, padding=1)
    fma = kernel.stem_backward(t, w2, b2, 0.2, g, slope_d, offset_d, pool, x, True, allow_amx=False)
    amx = kernel.stem_backward(t, w2, b2, 0.2, g, slope_d, offset_d, pool, x, True, allow_amx=True)
    assert relative_error(amx[3], fma[3]) < 1e-2  # (gt rounded to bf16: ~2e-3 here)
    for got, want in zip(amx[:3] + amx[4:], fma[:3] + fma[4:]):
        assert torch.equal(got, want)
    assert torch.equal(torch.nn.functional.conv2d(conv_in, conv_w, padding=1), before)


CASES = [
    # (input shape, output size, interpolation, antialias, channels_last)
    ((3, 3, 32, 24), (16, 12), "bilinear", False, True),  # exactly half: the kernel takes the resize too
    ((3, 3, 23, 19), 9, "bilinear", False, False),
    ((5, 3, 40, 36), (17, 11), "bicubic", True, True),
    ((4, 3, 30, 30), 15, "nearest", False, False),
    ((2, 3, 12, 10), (20, 16), "bilinear", False, True),  # an upscale
]


@pytest.mark.parametrize("input_grad", [False, True], ids=["kernel-conv-grad", "onednn-conv-grad"])
@pytest.mark.parametrize(("shape", "size", "interpolation", "antialias", "channels_last"), CASES)
def test_training_step_equals_the_reference(shape, size, interpolation, antialias, channels_last, input_grad):
    reference, kernel = pair(size, interpolation=interpolation, antialias=antialias)
    x = torch.randn(*shape) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # two steps: the running statistics must agree too
        y0, gx0, gp0 = step(reference, x, input_grad)
        y1, gx1, gp1 = step(kernel, x, input_grad)
        torch.testing.assert_close(y1, y0, rtol=0, atol=1e-4)
        if input_grad:
            torch.testing.assert_close(gx1, gx0, rtol=1e-4, atol=1e-6)
        for name, grad in gp0.items():
            torch.testing.assert_close(gp1[name], grad, rtol=1e-4, atol=1e-6, msg=name)
            assert float((gp1[name] - grad).abs().max()) <= 1e-4, name  # and within 1e-4 absolute
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(dict(kernel.named_buffers())[name], buffer, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(("kwargs", "in_channels"), [
    ({"num_filters": 8}, 3),
    ({"num_filters": 32}, 3),
    ({"in_channels": 1}, 1),  # not 3 input channels: oneDNN takes the 7x7 weight gradient
    ({"num_res_blocks": 0}, 3),
    ({"num_res_blocks": 2}, 3),
], ids=["8-filters", "32-filters", "1-input-channel", "no-res-block", "2-res-blocks"])
def test_other_shapes(kwargs, in_channels):
    reference, kernel = pair(10, **kwargs)
    x = torch.randn(3, in_channels, 20, 20)
    y0, _, gp0 = step(reference, x, input_grad=False)
    y1, _, gp1 = step(kernel, x, input_grad=False)
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-4)
    for name, grad in gp0.items():
        torch.testing.assert_close(gp1[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("grad", [False, True])
def test_evaluation_equals_the_reference(grad):
    reference, kernel = pair((11, 13))
    assert_evaluation_equal(reference, kernel, torch.randn(4, 3, 22, 26), grad)


def test_statistics_hold_when_the_mean_dwarfs_the_spread():
    assert_statistics_hold_when_the_mean_dwarfs_the_spread(*pair(8))


@pytest.mark.parametrize("input_grad", [False, True])
def test_bf16_autocast_is_as_close_as_the_reference(input_grad):
    """Under bf16 autocast both implementations round differently; each must be as close to the fp32
    result as the other (within a factor of two), on the output and on every parameter gradient."""
    reference, kernel = pair(24)
    x = torch.randn(4, 3, 48, 48)
    y32, _, g32 = step(copy.deepcopy(reference), x, input_grad)
    y0, _, g0 = step(reference, x, input_grad, autocast=True)
    y1, _, g1 = step(kernel, x, input_grad, autocast=True)
    assert y1.dtype == y0.dtype
    assert relative_error(y1, y32) <= 2 * relative_error(y0, y32) + 1e-3
    for name in g32:
        assert relative_error(g1[name], g32[name]) <= 2 * relative_error(g0[name], g32[name]) + 1e-3, name


def test_keeps_less_for_backward():
    reference, kernel = pair(32)
    x = torch.randn(4, 3, 64, 64)
    assert saved_bytes(kernel, x) < 0.6 * saved_bytes(reference, x)


def batch_norm(channels, training, momentum=0.1):
    torch.manual_seed(1)
    bn = torch.nn.BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn.train(training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("residual", [False, True], ids=["", "residual"])
@pytest.mark.parametrize("slope", [1.0, 0.2], ids=["no-act", "lrelu"])
def test_batchnorm_kernel_equals_pytorch(slope, residual, training):
    """leaky_relu(bn(x)) + residual through the kernel against PyTorch's ops: output, the gradients of
    x, the residual, the weight and the bias, and the running statistics (odd sizes: an odd row)."""
    x = (torch.randn(3, 16, 7, 9) * 2 + 0.5).contiguous(memory_format=torch.channels_last)
    r = torch.randn_like(x) if residual else None
    g = torch.randn_like(x)
    results = []
    for op in (bn_act_reference, bn_act):
        bn = batch_norm(16, training, momentum=None)  # (a cumulative average)
        xs = x.detach().requires_grad_(True)
        rs = r.detach().requires_grad_(True) if residual else None
        y = op(xs, bn, slope, rs)
        y.backward(g)
        y = op(xs, bn, slope, rs)  # a second step: the running statistics' average
        results.append([y, xs.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var,
                        *([rs.grad] if residual else [])])
    assert results[1][0].is_contiguous(memory_format=torch.channels_last)
    for got, want in zip(*reversed(results)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels", [8, 32])
def test_batchnorm_kernel_statistics_hold_when_the_mean_dwarfs_the_spread(channels):
    x = (torch.randn(4, channels, 10, 10) + 1000).contiguous(memory_format=torch.channels_last)
    bn0, bn1 = batch_norm(channels, True), batch_norm(channels, True)
    torch.testing.assert_close(bn_act(x, bn1), bn_act_reference(x, bn0), rtol=0, atol=5e-3)
    torch.testing.assert_close(bn1.running_var, bn0.running_var, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn1.running_mean, bn0.running_mean, rtol=1e-6, atol=0)


def test_for_inference_runs_with_the_kernels():
    """for_inference() folds the output-resolution BatchNorms into the convolutions: the kernels'
    path must take the layers it finds."""
    reference, kernel = pair(12)
    x = torch.randn(2, 3, 24, 24)
    for module in (reference, kernel):
        module(x * 3 + 1)
    with torch.no_grad():
        torch.testing.assert_close(kernel.for_inference()(x), reference.for_inference()(x), rtol=0, atol=1e-5)


def test_double_backward_is_a_clear_error():
    """The kernels' backward is not differentiable itself."""
    assert_double_backward_raises(pair(6)[1])


def test_other_dtypes_and_devices_take_the_plain_path():
    reference, kernel = pair(8, dtype=torch.float64)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert not kernels.applies(kernel, x)
    torch.testing.assert_close(kernel(x), reference(x), rtol=0, atol=0)
    assert kernels.applies(kernel, x.float()) is False  # float64 parameters: plain path too
    assert kernels.applies(pair(8)[1], torch.randn(1, 3, 16, 16))
    assert "cpu_kernels=True" in repr(kernel)


def test_a_failed_build_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing built here yet
    monkeypatch.setenv("PATH", str(tmp_path))  # and neither ninja nor a compiler to build it
    monkeypatch.setenv("CXX", str(tmp_path / "c++"))
    kernels._build.cache_clear()
    try:
        resizer = LearnableResizer(8, cpu_kernels=True)
        for _ in range(2):  # the failure is remembered, and reported each time
            with pytest.raises(kernels.KernelUnavailable, match="could not build the CPU kernels"):
                resizer(torch.randn(1, 3, 16, 16))
        assert kernels._build.cache_info().misses == 1
    finally:
        kernels._build.cache_clear()
