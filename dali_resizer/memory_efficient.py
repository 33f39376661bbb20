"""The memory-efficient form of :class:`~dali_resizer.LearnableResizer` (``memory_efficient=True``).

The stem runs at the input resolution (for example 448x448) with ``n`` channels: its feature maps are
most of what a plain forward keeps for backward. Here it runs a few images at a time, its BatchNorm
*folded* through the resize (the resize is linear with weights summing to one, so BatchNorm's affine
map commutes with it, and its statistics are sums that chunks add up), and backward recomputes each
chunk's features instead of reading them back. Same parameters and results as the reference form,
up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

__all__ = ["CHUNK_BYTES", "ChunkedStem", "chunk_budget", "chunks", "stem", "stem_features", "track_running_stats"]

# Bytes of the stem's full-resolution maps computed per step, by device type. On a CPU, what its caches
# hold; on a GPU, enough images per step that a batch takes a few launches, not one per image (16
# channels at 448 x 448 are 12.8 MB an image: 16 MiB is one image a step, 1 GiB about 80).
CHUNK_BYTES = {"cpu": 16 * 2**20, "cuda": 2**30}


def chunk_budget(module, device_type: str) -> int:
    """The module's ``chunk_bytes``, else :data:`CHUNK_BYTES` for the device type (``"cpu"``, ``"cuda"``)."""
    return module.chunk_bytes if module.chunk_bytes is not None else CHUNK_BYTES.get(device_type, CHUNK_BYTES["cpu"])


def stem(module, x: torch.Tensor) -> torch.Tensor:
    """``resize(stem(x))`` of a :class:`~dali_resizer.LearnableResizer`, a few images at a time.

    With batch statistics (training), through :class:`ChunkedStem`; with running statistics, BatchNorm is
    a fixed per-channel affine map, which commutes with the resize: it is applied after it, and each
    chunk's features are recomputed in backward (activation checkpointing).
    """
    conv1, conv2, bn = module.stem[0], module.stem[2], module.stem[4]
    slope = module.stem[1].negative_slope
    batch_stats = bn.training or bn.running_mean is None
    if not batch_stats:
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        shift = bn.bias - bn.running_mean * scale

        def features(t):
            return module._resize(stem_features(t, conv1, conv2, slope))

        grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.stem.parameters()))
        parts = chunks(x, conv2.out_channels, chunk_budget(module, x.device.type))
        r = torch.cat([torch.utils.checkpoint.checkpoint(features, x[part], use_reentrant=False) if grad
                       else features(x[part]) for part in parts])
        return (r * scale[:, None, None] + shift[:, None, None]).to(r.dtype)
    out, mean, var = ChunkedStem.apply(x, conv1.weight, conv1.bias, conv2.weight, conv2.bias, bn.weight, bn.bias,
                                       module)
    track_running_stats(bn, mean, var)
    return out


def stem_features(x, conv1: nn.Conv2d, conv2: nn.Conv2d, slope: float, params=None) -> torch.Tensor:
    """The stem up to its BatchNorm: 7x7 conv, LeakyReLU, 1x1 conv, LeakyReLU (``params``: the two convs'
    weights and biases to use instead of the modules' own)."""
    w1, b1, w2, b2 = params if params is not None else (conv1.weight, conv1.bias, conv2.weight, conv2.bias)
    x = F.leaky_relu(F.conv2d(x, w1, b1, conv1.stride, conv1.padding, conv1.dilation, conv1.groups), slope)
    return F.leaky_relu(F.conv2d(x, w2, b2, conv2.stride, conv2.padding, conv2.dilation, conv2.groups), slope)


def chunks(x: torch.Tensor, channels: int, budget_bytes: int) -> list[slice]:
    """Slices of the batch whose ``channels``-channel float32 maps at ``x``'s resolution fit the budget
    (the working set of one step of the chunked stem: see :func:`chunk_budget`)."""
    per_image = channels * x.shape[-2] * x.shape[-1] * 4
    step = max(1, budget_bytes // per_image)
    return [slice(i, min(i + step, x.shape[0])) for i in range(0, x.shape[0], step)]


class ChunkedStem(torch.autograd.Function):
    """``resize(BN(stem_features(x)))`` with BatchNorm in training mode (batch statistics), computed a
    few images at a time so that the full-resolution feature maps are never stored.

    Exact, because the resize is linear with weights that sum to one at each output pixel (bilinear,
    bicubic, nearest, with or without antialiasing): ``resize(BN(d)) = BN's affine map of resize(d)``
    with the statistics of ``d``, and the two sums BatchNorm's backward needs over ``d``'s resolution
    equal sums at the output resolution. Backward recomputes each chunk's features (one more stem
    forward) instead of reading them back from memory.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, gamma, beta, module):
        stem = module.stem
        conv1, conv2, bn = stem[0], stem[2], stem[4]
        slope, n = stem[1].negative_slope, conv2.out_channels
        # Sums per chunk in the accumulation dtype, around the first chunk's mean (no cancellation when
        # the mean is large against the spread), added up across chunks in float64.
        total = torch.zeros(n, dtype=torch.float64, device=x.device)
        total_sq = torch.zeros_like(total)
        shift = None
        resized = []
        for part in chunks(x, n, chunk_budget(module, x.device.type)):
            d = stem_features(x[part], conv1, conv2, slope)
            da = d.to(torch.float64 if d.dtype == torch.float64 else torch.float32)
            if shift is None:
                shift = da.mean(dim=(0, 2, 3), keepdim=True)[0]
            total += da.sum(dim=(0, 2, 3))
            total_sq += (da - shift).square().sum(dim=(0, 2, 3))
            resized.append(module._resize(d))
        count = x.shape[0] * x.shape[-2] * x.shape[-1]
        mean = total / count
        var = (total_sq / count - (mean - shift.view(-1).double()).square()).clamp_(min=0)
        invstd = (var + bn.eps).rsqrt()
        r = torch.cat(resized)
        acc = torch.float64 if r.dtype == torch.float64 else torch.float32  # (BatchNorm's own precision)
        mean_a, invstd_a = mean.to(acc), invstd.to(acc)
        scale = (invstd_a * gamma.to(acc))[:, None, None]
        out = ((r.to(acc) - mean_a[:, None, None]) * scale + beta.to(acc)[:, None, None]).to(r.dtype)
        ctx.module = module
        ctx.count = count
        device_type = x.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.save_for_backward(x, w1, b1, w2, b2, gamma, r, mean_a, invstd_a)
        var_unbiased = (var * count / max(count - 1, 1)).to(acc)
        ctx.mark_non_differentiable(mean_a, var_unbiased)
        return out, mean_a, var_unbiased

    @staticmethod
    @torch.autograd.function.once_differentiable  # (its recomputation is not recorded for a second backward)
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, w1, b1, w2, b2, gamma, r, mean, invstd = ctx.saved_tensors
        module = ctx.module
        stem = module.stem
        conv1, conv2 = stem[0], stem[2]
        slope = stem[1].negative_slope
        acc = mean.dtype
        g = grad_out.to(acc)
        xhat_r = (r.to(acc) - mean[:, None, None]) * invstd[:, None, None]
        sum_g = g.sum(dim=(0, 2, 3))
        sum_gx = (g * xhat_r).sum(dim=(0, 2, 3))
        scale = gamma.to(acc) * invstd
        k1, k2 = sum_g / ctx.count, sum_gx / ctx.count
        # BatchNorm's backward beyond the resize: gamma * invstd * (-k1 - xhat * k2), affine in d per channel
        slope_d = (-scale * k2 * invstd)[:, None, None]
        offset_d = (-scale * (k1 - mean * invstd * k2))[:, None, None]
        params = [t.detach().requires_grad_(True) for t in (w1, b1, w2, b2)]
        grads = [torch.zeros_like(t, dtype=acc) for t in params]
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        device_type, autocast_on, autocast_dtype = ctx.autocast
        for part in chunks(x, conv2.out_channels, chunk_budget(module, x.device.type)):
            xc = x[part].detach().requires_grad_(grad_x is not None)
            with torch.enable_grad(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
                d = stem_features(xc, conv1, conv2, slope, params)
                rc = module._resize(d)
            g_d = torch.addcmul(offset_d, d.detach(), slope_d)
            g_r = g[part] * scale[:, None, None]
            inputs = [*params, xc] if grad_x is not None else params
            got = torch.autograd.grad([rc, d], inputs, [g_r.to(rc.dtype), g_d.to(d.dtype)])
            for total, new in zip(grads, got):
                total += new.to(acc)
            if grad_x is not None:
                grad_x[part] = got[-1]
        grads = [total.to(t.dtype) for total, t in zip(grads, (w1, b1, w2, b2))]
        return grad_x, *grads, sum_gx.to(gamma.dtype), sum_g.to(gamma.dtype), None


def track_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Updates ``bn``'s running statistics from a batch's (as ``nn.BatchNorm2d`` does in training)."""
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(var.to(bn.running_var.dtype), momentum)
