"""The CPU-kernel form of :class:`~dali_resizer.LearnableResizer` (``cpu_kernels=True``).

C++ kernels (``csrc/``) for CPU tensors: ``stem.cpp`` runs the input-resolution stem after its 7x7
convolution (LeakyReLU, the 1x1 convolution, LeakyReLU, BatchNorm's sums, and a bilinear resize to
half the size) in one pass, recomputed in backward; ``batchnorm.cpp`` runs each output-resolution
BatchNorm with the LeakyReLU or the residual addition after it, in one pass for its statistics and
one for its output. BatchNorm is *folded* through the resize as in
:mod:`dali_resizer.memory_efficient`. Same results as the reference form up to float rounding.

The extension is compiled on first use with the C++ compiler PyTorch's extensions use (``torch.utils.
cpp_extension``, needs ``g++`` and ``ninja``) and cached under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``). It is compiled for the vector instructions this CPU has, under a name
that says which, so a cache shared by machines with different CPUs never loads a build the CPU can't run.
"""

from __future__ import annotations

import functools
import os
import platform

import torch
import torch.nn.functional as F
from torch import nn

from dali_resizer.memory_efficient import track_running_stats
from dali_resizer.resizer import Interpolation

__all__ = ["KernelUnavailable", "applies", "bn_act", "forward", "load"]

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_SOURCES = [os.path.join(_CSRC, name) for name in ("stem.cpp", "batchnorm.cpp")]


class KernelUnavailable(RuntimeError):
    """The CPU kernels could not be built or loaded here (the message says why)."""


def _arch_flags() -> tuple[str, list[str]]:
    """(name suffix, compiler flags) for the vector instructions of this CPU."""
    capability = torch.backends.cpu.get_cpu_capability()  # what ATen's own kernels dispatched to
    if platform.machine() in ("x86_64", "AMD64"):
        if capability.startswith("AVX512"):
            return "avx512", ["-march=x86-64-v4", "-mprefer-vector-width=512"]
        if capability.startswith("AVX2"):
            return "avx2", ["-march=x86-64-v3"]
    return "generic", []


def load():
    """The compiled extension module; raises :class:`KernelUnavailable` when it can't be built (the
    failure is remembered: a process tries once)."""
    result = _build()
    if isinstance(result, BaseException):
        raise KernelUnavailable(str(result)) from result
    return result


@functools.cache
def _build():
    from torch.utils import cpp_extension

    suffix, flags = _arch_flags()
    try:
        return cpp_extension.load(
            name=f"dali_resizer_kernels_{suffix}",
            sources=_SOURCES,
            extra_cflags=["-O3", "-fopenmp", *flags],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # a missing compiler or ninja, a failed build: say which
        return KernelUnavailable(f"could not build the CPU kernels ({_CSRC}): {e}")


def applies(module, x: torch.Tensor) -> bool:
    """Whether the kernels run ``module`` on ``x``: CPU tensors, float32 (or bfloat16 under autocast),
    8, 16 or 32 filters, float32 parameters; elsewhere the reference form runs."""
    if x.device.type != "cpu" or module.stem[2].out_channels not in (8, 16, 32):
        return False
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    params = (p.dtype for p in module.stem.parameters())
    return dtype in (torch.float32, torch.bfloat16) and all(p == torch.float32 for p in params)


def forward(module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` through the kernels (the same graph as ``LearnableResizer``'s reference forward)."""
    skip = module._resize(x)
    conv1, conv2, bn = module.stem[0], module.stem[2], module.stem[4]
    batch_stats = bn.training or bn.running_mean is None
    f, mean, var = _KernelStem.apply(x, conv1.weight, conv1.bias, conv2.weight, conv2.bias, bn.weight, bn.bias,
                                     module, batch_stats)
    if batch_stats:
        track_running_stats(bn, mean, var)
    y = f
    for block in module.res_blocks:
        h = bn_act(block.conv1(y), block.bn1, block.act.negative_slope)
        y = bn_act(block.conv2(h), block.bn2, residual=y)
    y = bn_act(module.merge[0](y), module.merge[1], residual=f)
    return module.head(y) + skip


def _resize_backward(g: torch.Tensor, input_shape, interpolation: Interpolation, antialias: bool) -> torch.Tensor:
    """The gradient of :func:`resize` with respect to its input, from the gradient ``g`` of its output."""
    size, shape = list(g.shape[-2:]), list(input_shape)
    if size == shape[-2:]:
        return g
    aten = torch.ops.aten
    if interpolation is Interpolation.NEAREST:
        return aten._upsample_nearest_exact2d_backward(g, size, shape)
    if interpolation is Interpolation.BILINEAR:
        op = aten._upsample_bilinear2d_aa_backward if antialias else aten.upsample_bilinear2d_backward
    else:
        op = aten._upsample_bicubic2d_aa_backward if antialias else aten.upsample_bicubic2d_backward
    return op(g, size, shape, False)


def _bn_affine(bn: nn.BatchNorm2d, weight: torch.Tensor, bias: torch.Tensor, count: int, sums=None):
    """BatchNorm as the per-channel map ``x * scale + offset``, from ``sums = (sum, sum of squares,
    shift)``, the kernels' float64 sums of ``x - shift`` and ``(x - shift)^2`` over ``count`` values
    (``None``: from the running statistics). Returns float32 ``(scale, offset, mean, invstd)`` and
    the unbiased variance (for the running statistics)."""
    if sums is not None:
        total, squares, shift = sums
        centred = total / count
        mean = shift.double() + centred
        var = (squares / count - centred.square()).clamp_(min=0)
    else:
        mean, var = bn.running_mean.double(), bn.running_var.double()
    invstd = (var + bn.eps).rsqrt()
    scale = weight.detach().double() * invstd
    offset = bias.detach().double() - mean * scale
    var_unbiased = var * count / max(count - 1, 1)
    return tuple(t.float().contiguous() for t in (scale, offset, mean, invstd, var_unbiased))


class _KernelStem(torch.autograd.Function):
    """``resize(BN(stem_features(x)))`` on the CPU with the kernel of ``csrc/stem.cpp``.

    The 7x7 convolution runs in oneDNN (channels_last); the kernel does LeakyReLU, the 1x1
    convolution, LeakyReLU and BatchNorm's sums in one pass over its output and, for a bilinear
    resize to exactly half the size, the resize too (its 2x2 average); other resizes run on the
    kernel's output. BatchNorm's affine map is applied after the resize (exact, see
    :class:`dali_resizer.memory_efficient.ChunkedStem`). Only the 7x7 convolution's output is kept
    for backward, where the kernel recomputes the rest per pixel. ``batch_stats=False``: BatchNorm
    with its running statistics.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, gamma, beta, module, batch_stats: bool):
        kernel = load()
        stem = module.stem
        conv1, conv2, bn = stem[0], stem[2], stem[4]
        slope, n = stem[1].negative_slope, conv2.out_channels
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype  # what conv2d would run in
        xc = x.to(dtype, memory_format=torch.channels_last)
        w1c, b1c = w1.to(dtype), b1.to(dtype)
        with torch.autocast(device_type, enabled=False):
            t = F.conv2d(xc, w1c, b1c, conv1.stride, conv1.padding, conv1.dilation, conv1.groups)
        th = t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # (N, H, W, n), contiguous
        w2f, b2f = w2.detach().reshape(n, n).float().contiguous(), b2.detach().float().contiguous()
        h, w = module.size
        pool = (module.interpolation is Interpolation.BILINEAR and not module.antialias
                and th.shape[1] == 2 * h and th.shape[2] == 2 * w)
        # BatchNorm's sums are taken around the features of the centre pixel of the first image.
        with torch.no_grad():
            centre = th[0, th.shape[1] // 2, th.shape[2] // 2].float()
            shift = F.leaky_relu(F.leaky_relu(centre, slope) @ w2f.T + b2f, slope).contiguous()
        out, sums, squares = kernel.stem_forward(th, w2f, b2f, slope, shift, pool)
        out = out.permute(0, 3, 1, 2)  # (N, n, ., .) channels_last
        r = out if pool else module._resize(out)
        count = th.shape[0] * th.shape[1] * th.shape[2]
        scale, offset, mean, invstd, var_unbiased = _bn_affine(bn, gamma, beta, count,
                                                               (sums, squares, shift) if batch_stats else None)
        # BatchNorm's affine map with these statistics, in one pass at the output resolution
        rh = r.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        y = kernel.bn_forward(rh, scale, offset, 1.0).permute(0, 3, 1, 2)
        ctx.module, ctx.count, ctx.pool, ctx.batch_stats = module, count, pool, batch_stats
        ctx.dtypes = (x.dtype, w1.dtype, b1.dtype)
        ctx.save_for_backward(xc, w1c, th, w2, b2, gamma, rh, scale, offset, mean, invstd)
        ctx.mark_non_differentiable(mean, var_unbiased)
        return y, mean, var_unbiased

    @staticmethod
    @torch.autograd.function.once_differentiable  # (the kernel's backward is not differentiable itself)
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        kernel = load()
        xc, w1c, th, w2, b2, gamma, rh, scale, offset, mean, invstd = ctx.saved_tensors
        module = ctx.module
        conv1, n = module.stem[0], module.stem[2].out_channels
        slope = module.stem[1].negative_slope
        # g_r = grad * gamma * invstd, and the sums of grad and of grad * (r - mean), in one pass
        g = grad_out.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        g_r, sum_g, sum_gc = kernel.bn_backward(g, rh, scale, offset, 1.0, mean, invstd, False)
        g_r = g_r.permute(0, 3, 1, 2)
        sum_gx = sum_gc * invstd.double()  # the sum of grad * xhat: gamma's gradient
        if ctx.batch_stats:  # BatchNorm's backward beyond the resize, affine in the features per channel
            k1, k2 = (sum_g / ctx.count).float(), (sum_gx / ctx.count).float()
            slope_d = -scale * k2 * invstd
            offset_d = -scale * (k1 - mean * invstd * k2)
        else:
            slope_d = offset_d = torch.zeros_like(invstd)
        if not ctx.pool:
            g_r = _resize_backward(g_r, (th.shape[0], n, th.shape[1], th.shape[2]), module.interpolation,
                                   module.antialias)
        g_in = g_r.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        w2f, b2f = w2.detach().reshape(n, n).float().contiguous(), b2.detach().float().contiguous()
        # The kernel takes the 7x7 convolution's weight gradient too (3 input channels: oneDNN's is slow)
        conv_in_kernel = (xc.shape[1] == 3 and conv1.kernel_size == (7, 7) and conv1.padding == (3, 3)
                      and conv1.stride == (1, 1) and conv1.dilation == (1, 1) and conv1.groups == 1)
        need_x = ctx.needs_input_grad[0]
        g_t, g_w2, g_b2, g_w1, g_b1 = kernel.stem_backward(
            th, w2f, b2f, slope, g_in, slope_d.contiguous(), offset_d.contiguous(), ctx.pool,
            xc.permute(0, 2, 3, 1) if conv_in_kernel else None, need_x)
        g_x = None
        if need_x or not conv_in_kernel:
            g_x, g_w1_, g_b1_ = torch.ops.aten.convolution_backward(
                g_t.permute(0, 3, 1, 2), xc, w1c, [w1c.shape[0]], conv1.stride, conv1.padding, conv1.dilation,
                False, [0, 0], conv1.groups, [need_x, not conv_in_kernel, not conv_in_kernel])
            if not conv_in_kernel:
                g_w1, g_b1 = g_w1_, g_b1_
        x_dtype, w1_dtype, b1_dtype = ctx.dtypes
        return (None if g_x is None else g_x.to(x_dtype), g_w1.to(w1_dtype), g_b1.to(b1_dtype),
                g_w2.reshape(w2.shape).to(w2.dtype), g_b2.to(b2.dtype), sum_gx.to(gamma.dtype),
                sum_g.to(gamma.dtype), None, None)


class _BatchNormAct(torch.autograd.Function):
    """``leaky_relu(batch_norm(x)) + residual`` on CPU channels_last tensors with the kernel of
    ``csrc/batchnorm.cpp``: one pass for BatchNorm's statistics and one for the output (PyTorch:
    three passes, and a slow channels_last bfloat16 BatchNorm); backward recomputes the normalized
    values from ``x``, so BatchNorm's output is never stored. ``slope=1``: no LeakyReLU.
    ``batch_stats=False``: BatchNorm with its running statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, bn: nn.BatchNorm2d, slope: float, batch_stats: bool):
        kernel = load()
        xh = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # (N, H, W, C), contiguous
        n, h, w, _ = xh.shape
        sums = None
        if batch_stats:  # sums around the centre pixel of the first image
            shift = xh[0, h // 2, w // 2].float().contiguous()
            sums = (*kernel.bn_stats(xh, shift), shift)
        scale, offset, mean, invstd, var_unbiased = _bn_affine(bn, weight, bias, n * h * w, sums)
        if residual is not None:
            residual = residual.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        y = kernel.bn_forward(xh, scale, offset, slope, residual).permute(0, 3, 1, 2)
        ctx.slope, ctx.batch_stats, ctx.residual = slope, batch_stats, residual is not None
        ctx.dtypes = (weight.dtype, bias.dtype)
        ctx.save_for_backward(xh, scale, offset, mean, invstd)
        ctx.mark_non_differentiable(mean, var_unbiased)
        return y, mean, var_unbiased

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        xh, scale, offset, mean, invstd = ctx.saved_tensors
        g = grad_out.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        grad_x, sum_g, sum_gx = load().bn_backward(g, xh, scale, offset, ctx.slope, mean, invstd,
                                                                ctx.batch_stats)
        weight_dtype, bias_dtype = ctx.dtypes
        grad_weight = (sum_gx * invstd.double()).to(weight_dtype)
        return (grad_x.permute(0, 3, 1, 2), grad_weight, sum_g.to(bias_dtype), grad_out if ctx.residual else None,
                None, None, None)


def bn_act(x: torch.Tensor, bn: nn.BatchNorm2d, slope: float = 1.0,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """``leaky_relu(bn(x), slope) + residual`` (``slope=1``: no LeakyReLU; no residual: none added),
    through :class:`_BatchNormAct` when the tensors suit the kernel, else PyTorch's ops."""
    if (isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.weight.dtype == bn.bias.dtype == torch.float32
            and x.device.type == "cpu" and x.ndim == 4 and x.shape[1] in (8, 16, 32)
            and x.dtype in (torch.float32, torch.bfloat16)
            and (residual is None or (residual.dtype == x.dtype and residual.shape == x.shape))):
        batch_stats = bn.training or bn.running_mean is None
        y, mean, var = _BatchNormAct.apply(x, bn.weight, bn.bias, residual, bn, float(slope), batch_stats)
        if batch_stats:
            track_running_stats(bn, mean, var)
        return y
    y = bn(x)
    if slope != 1.0:
        y = F.leaky_relu(y, slope)
    return y if residual is None else y + residual
