"""MullerResizer (Tu, Talebi & Milanfar, ICCV 2023): shapes, its zero start, the Laplacian layers against a
direct 2-D implementation, gradients, state_dict, channels_last and compile."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from dali_resizer import MullerResizer
from dali_resizer.resizer import Interpolation, resize


def reference(x, size, weights, biases, interpolation="bilinear", antialias=False, sigma=1.0, k=5, avg_pool=False):
    """The authors' loop, written out with a 2-D Gaussian kernel (zero padding, as TF's 'SAME')."""
    t = torch.arange(k, dtype=torch.float64) - k // 2
    g1 = torch.exp(-t.square() / (2 * sigma**2))
    g2 = torch.outer(g1, g1) / g1.sum() ** 2
    c = x.shape[1]

    def base(v):
        if avg_pool and v.shape[-2] // size[0] > 1 and v.shape[-1] // size[1] > 1:
            s = (v.shape[-2] // size[0], v.shape[-1] // size[1])
            v = F.avg_pool2d(v, s, ceil_mode=True)
        return F.interpolate(v, size=size, mode=interpolation, align_corners=False, antialias=antialias)

    net = base(x)
    for w, b in zip(weights, biases):
        blurred = F.conv2d(x, g2.to(x.dtype).expand(c, 1, k, k), padding=k // 2, groups=c)
        net = net + torch.tanh(w * base(blurred - x) + b)
        x = blurred
    return net


@pytest.mark.parametrize(("shape", "size"), [((1, 3, 17, 11), (5, 5)), ((2, 3, 33, 47), (13, 7)),
                                              ((2, 1, 8, 6), (15, 21)), ((3, 4, 20, 20), (20, 20))])
def test_output_shape_any_size_and_channels(shape, size):
    y = MullerResizer(size)(torch.randn(shape))
    assert y.shape == (shape[0], shape[1], *size)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("avg_pool", [False, True])
def test_fresh_module_is_exactly_its_base_resize(interpolation, antialias, avg_pool):
    if interpolation == "nearest" and antialias:
        pytest.skip("antialias applies to bilinear and bicubic only")
    x = torch.randn(2, 3, 31, 23)
    m = MullerResizer((9, 7), interpolation=interpolation, antialias=antialias, avg_pool=avg_pool)
    base = F.avg_pool2d(x, (3, 3), ceil_mode=True) if avg_pool else x
    torch.testing.assert_close(m(x), resize(base, (9, 7), Interpolation(interpolation), antialias), rtol=0, atol=0)


@pytest.mark.parametrize("avg_pool", [False, True])
def test_layers_match_the_authors_loop(avg_pool):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 40, 36, dtype=torch.float64)
    m = MullerResizer((12, 10), num_layers=3, avg_pool=avg_pool, dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([1.5, -2.0, 0.7]))
        m.bias.copy_(torch.tensor([0.1, -0.05, 0.2]))
    expected = reference(x, (12, 10), m.weight.detach(), m.bias.detach(), avg_pool=avg_pool)
    torch.testing.assert_close(m(x), expected)
    assert (m(x) - resize(x, (12, 10))).abs().max() > 0.05  # the layers do something once trained


def test_four_parameters_by_default_and_state_dict_round_trip():
    m = MullerResizer(24)
    assert sum(p.numel() for p in m.parameters()) == 4
    with torch.no_grad():
        m.weight.fill_(0.3)
        m.bias.fill_(-0.1)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert sorted(state) == ["bias", "weight"]  # the blur kernel is rebuilt from kernel_size and sigma
    other = MullerResizer(24)
    other.load_state_dict(state)
    x = torch.randn(1, 3, 50, 50)
    torch.testing.assert_close(other(x), m(x), rtol=0, atol=0)


def test_gradcheck():
    torch.manual_seed(0)
    m = MullerResizer((4, 5), dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.8, -1.1]))
        m.bias.copy_(torch.tensor([0.05, 0.1]))
    x = torch.randn(1, 2, 11, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: torch.func.functional_call(m, {"weight": w, "bias": b}, (x,)),
                                    (x, m.weight.detach().requires_grad_(), m.bias.detach().requires_grad_()))


def test_gradients_reach_the_parameters_from_the_zero_start():
    m = MullerResizer(8)
    x = torch.randn(2, 3, 32, 32)
    m(x).square().sum().backward()
    assert m.weight.grad.abs().min() > 0 and m.bias.grad.abs().min() > 0


def test_blur_is_a_normalised_gaussian():
    m = MullerResizer(8, kernel_size=5, sigma=1.0)
    g = m.blur_kernel
    assert g.sum().item() == pytest.approx(1.0)
    assert g[2] / g[1] == pytest.approx(math.exp(0.5)) and g[1] / g[0] == pytest.approx(math.exp(1.5))


def test_channels_last_input_not_modified_and_dtypes():
    m = MullerResizer(12)
    with torch.no_grad():
        m.weight.fill_(1.0)
    x = torch.randn(2, 3, 37, 29)
    before = x.clone()
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(m(xc), m(x))
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert torch.isfinite(y.float()).all()
    assert MullerResizer(12, dtype=torch.float64)(x.double()).dtype == torch.float64


@pytest.mark.slow
def test_torch_compile_matches_eager():
    m = MullerResizer((10, 14))
    with torch.no_grad():
        m.weight.fill_(0.5)
    x = torch.randn(2, 3, 30, 42)
    torch.testing.assert_close(torch.compile(m)(x), m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_layers": -1}, "num_layers"), ({"kernel_size": 4}, "kernel_size"), ({"sigma": 0.0}, "sigma"),
    ({"interpolation": "lanczos"}, "interpolation"), ({"size": (3,)}, "size")])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MullerResizer(**({"size": 8} | kwargs))


def test_rejects_non_batched_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        MullerResizer(8)(torch.randn(3, 16, 16))


@pytest.mark.needs_cuda
def test_cuda_matches_cpu():
    m = MullerResizer((12, 10), avg_pool=True)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.9, -0.6]))
        m.bias.copy_(torch.tensor([0.05, -0.02]))
    x = torch.randn(2, 3, 40, 36)
    y = m(x)
    y.square().sum().backward()
    grads = (m.weight.grad.clone(), m.bias.grad.clone())
    mc = MullerResizer((12, 10), avg_pool=True).cuda()
    mc.load_state_dict(m.state_dict())
    yc = mc(x.cuda())
    yc.square().sum().backward()
    assert yc.device.type == "cuda" and mc.blur_kernel.device.type == "cuda"
    torch.testing.assert_close(yc.cpu(), y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mc.weight.grad.cpu(), grads[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(mc.bias.grad.cpu(), grads[1], rtol=1e-3, atol=1e-3)
