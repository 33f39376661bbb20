"""Learnable image resizer.

Implements the resizer network of Talebi & Milanfar, "Learning to Resize Images for Computer Vision
Tasks", ICCV 2021 (arXiv:2103.09950): a small CNN, trained jointly with the backbone, that replaces
the fixed bilinear/bicubic downscale in front of a vision model::

    x ──resize──────────────────────────────────────────────────────┐ image skip
     └ conv7x7 ─ LReLU ─ conv1x1 ─ LReLU ─ BN ─ resize = f ─┐        │
         r × [conv3x3 ─ BN ─ LReLU ─ conv3x3 ─ BN, + identity]       │
         conv3x3 ─ BN, + f ─ conv7x7 (n→3) ──────────────────────── + ┘ → y

With ``num_filters=16`` and ``num_res_blocks=1`` the convolution weights hold 11,872 parameters
(16,480 with two residual blocks), as in the paper's Table 2.

This module is the reference form, written as the figure reads. The same module runs in two faster
forms, chosen by its options and kept in their own modules: ``memory_efficient=True``
(:mod:`dali_resizer.memory_efficient`: the input-resolution stem a few images at a time, recomputed in
backward) and ``cpu_kernels=True`` (:mod:`dali_resizer.kernels`: C++ kernels for CPU tensors).
:meth:`LearnableResizer.for_inference` *folds* each BatchNorm into the convolution before it. The
MULLER resizer is in :mod:`dali_resizer.muller`; :class:`FixedResizer` is the fixed baseline.

Antialiasing: :class:`FixedResizer` antialiases by default (``antialias=True``, as torchvision's
``Resize``), because a fixed downscale without it aliases. :class:`LearnableResizer` does not by
default (``antialias=False``), as in the paper, whose resizes are TensorFlow's plain bilinear: its
convolutions at the input resolution learn their own filtering. Pass ``antialias`` to either to
choose.
"""

from __future__ import annotations

import copy
import enum

import torch
import torch.nn.functional as F
from torch import nn

from dali_resizer.utils import to_size

__all__ = ["FixedResizer", "Interpolation", "LearnableResizer", "resize", "to_interpolation"]


class Interpolation(str, enum.Enum):
    """Interpolation of the fixed resizes inside the module (values match torchvision's ``InterpolationMode``)."""

    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    NEAREST = "nearest"


def to_interpolation(interpolation: str | enum.Enum) -> Interpolation:
    value = getattr(interpolation, "value", interpolation)  # accepts torchvision's InterpolationMode too
    try:
        return Interpolation(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in Interpolation)
        raise ValueError(f"interpolation must be one of {allowed}, got {interpolation!r}") from None


def resize(
    x: torch.Tensor,
    size: tuple[int, int],
    interpolation: Interpolation = Interpolation.BILINEAR,
    antialias: bool = False,
) -> torch.Tensor:
    """Resizes an ``(N, C, H, W)`` batch to ``size`` with the half-pixel (``align_corners=False``) convention."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if interpolation is Interpolation.NEAREST:
        return F.interpolate(x, size=size, mode="nearest-exact")
    if interpolation is Interpolation.BILINEAR and not antialias and tuple(x.shape[-2:]) == (2 * size[0], 2 * size[1]):
        # An exact 2x bilinear downscale samples between each 2x2 block: their mean. avg_pool2d gives the same
        # forward with a deterministic backward (bilinear's on CUDA adds with atomics) that is also faster.
        return F.avg_pool2d(x, 2)
    # Antialiasing only changes a downscale; PyTorch implements it for bilinear and bicubic alone.
    return F.interpolate(x, size=size, mode=interpolation.value, align_corners=False, antialias=antialias)


class FixedResizer(nn.Module):
    """The fixed baseline in the resizer's place: a plain resize to ``size``, no parameters.

    Args:
        size: Output size, an int for a square or ``(height, width)``.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        antialias: Low-pass filter a downscale, as torchvision's ``Resize`` does by default. On by
            default here, off by default in :class:`LearnableResizer` (see the module's notes).
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        interpolation: str | Interpolation = Interpolation.BILINEAR,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        self.size = to_size(size)
        self.interpolation = to_interpolation(interpolation)
        self.antialias = bool(antialias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(x, self.size, self.interpolation, self.antialias)

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation.value}, antialias={self.antialias}"


class _ResBlock(nn.Module):
    def __init__(self, channels: int, negative_slope: float, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(channels, **dd)
        self.act = nn.LeakyReLU(negative_slope)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(channels, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))) + x



class LearnableResizer(nn.Module):
    """Learned downscale (or upscale) of an image batch to a fixed output size.

    Put it in front of a backbone and train both together; the loader delivers the larger working
    size (for example 448x448) and the resizer maps it to the backbone's input (for example 224x224).

    Args:
        size: Output size, an int for a square or ``(height, width)``.
        num_filters: Channels of the inner feature maps (``n`` in the paper).
        num_res_blocks: Residual blocks at the output resolution (``r`` in the paper).
        interpolation: Fixed resize used for the image skip and the feature resize:
            ``"bilinear"`` (the paper's), ``"bicubic"`` or ``"nearest"``. torchvision's
            ``InterpolationMode`` is accepted too.
        antialias: Low-pass filter the fixed resizes when they downscale (bilinear and bicubic only),
            like ``torchvision.transforms.v2.Resize(antialias=True)``. Off by default, as in the paper
            (:class:`FixedResizer`'s default is on: see the module's notes).
        negative_slope: Slope of the LeakyReLU activations (0.2 in the paper).
        zero_init: Zero the last 7x7 convolution, so that the module starts out as exactly the fixed
            resize and learns a residual on top of it.
        memory_efficient: Compute the input-resolution stem a few images at a time, its BatchNorm
            folded through the resize and its features recomputed in backward
            (:mod:`dali_resizer.memory_efficient`), so that its full-resolution
            maps are never stored: about a third of the activations kept for backward (27.6 instead
            of 73.5 MiB per 448x448 image), for one more stem forward in backward
            (``benchmarks/resizer.py``). Same parameters, same results as the plain module up to
            float rounding; switch it on the module at any time.
        cpu_kernels: On CPU tensors (float32, or bfloat16 under autocast; 8, 16 or 32 filters), run
            the module through C++ kernels (:mod:`dali_resizer.kernels`, ``csrc/``, compiled on first use, needs
            ``g++`` and ``ninja``). The stem: the 7x7 convolution in oneDNN, then LeakyReLU, the 1x1
            convolution, LeakyReLU, BatchNorm's statistics and (bilinear to half the size) the
            resize in one pass, recomputed in backward, so only the 7x7 convolution's output is kept
            at the input resolution; backward also takes the 7x7 convolution's weight gradient (on
            AMX tiles for bfloat16 where the CPU has them). At the output resolution, each BatchNorm with the
            LeakyReLU or the residual addition after it, in one pass for its statistics and one for its output.
            Same results as the plain module up to float rounding; elsewhere (CUDA, other dtypes)
            the plain path runs. Takes precedence over ``memory_efficient``. Raises
            ``dali_resizer.kernels.KernelUnavailable`` (with the compiler's message) when the
            kernels can't be built.
        device: Device of the parameters.
        dtype: Data type of the parameters.

    Shape:
        - Input: ``(N, 3, H, W)`` for any ``H`` and ``W``.
        - Output: ``(N, 3, h, w)`` with ``(h, w) = size``, in the input's dtype and on its device.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torchvision.models import resnet18
        >>> model = nn.Sequential(LearnableResizer(224), resnet18(num_classes=10))
        >>> model(torch.randn(2, 3, 448, 448)).shape
        torch.Size([2, 10])
    """

    # memory_efficient: the stem's full-resolution maps per step; None: by the input's device
    # (memory_efficient.CHUNK_BYTES: a CPU's caches, or enough images per launch on a GPU)
    chunk_bytes: int | None = None

    def __init__(
        self,
        size: int | tuple[int, int],
        num_filters: int = 16,
        num_res_blocks: int = 1,
        interpolation: str | Interpolation = Interpolation.BILINEAR,
        antialias: bool = False,
        negative_slope: float = 0.2,
        zero_init: bool = False,
        memory_efficient: bool = False,
        cpu_kernels: bool = False,
        in_channels: int = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_filters, int) or num_filters < 1:
            raise ValueError(f"num_filters must be a positive int, got {num_filters!r}")
        if not isinstance(num_res_blocks, int) or num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be a non-negative int, got {num_res_blocks!r}")
        self.size = to_size(size)
        self.interpolation = to_interpolation(interpolation)
        self.antialias = bool(antialias)
        self.memory_efficient = bool(memory_efficient)
        self.cpu_kernels = bool(cpu_kernels)
        dd = {"device": device, "dtype": dtype}
        n = num_filters

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, n, 7, padding=3, **dd),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(n, n, 1, **dd),
            nn.LeakyReLU(negative_slope),
            nn.BatchNorm2d(n, **dd),
        )
        self.res_blocks = nn.Sequential(*(_ResBlock(n, negative_slope, **dd) for _ in range(num_res_blocks)))
        self.merge = nn.Sequential(  # conv3x3 - BN, then + f
            nn.Conv2d(n, n, 3, padding=1, bias=False, **dd),
            nn.BatchNorm2d(n, **dd),
        )
        self.head = nn.Conv2d(n, in_channels, 7, padding=3, **dd)
        if zero_init:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        return resize(x, self.size, self.interpolation, self.antialias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
        if self.cpu_kernels:
            from dali_resizer import kernels

            if kernels.applies(self, x):
                return kernels.forward(self, x)
        skip = self._resize(x)  # (N, 3, h, w)
        if self.memory_efficient:
            from dali_resizer import memory_efficient

            f = memory_efficient.stem(self, x)
        else:
            f = self._resize(self.stem(x))  # (N, n, h, w)
        y = self.merge(self.res_blocks(f)) + f  # (N, n, h, w)
        return self.head(y) + skip  # (N, 3, h, w)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # (state dicts saved under the block's former name, "fuse", still load)
        for key in [k for k in state_dict if k.startswith(prefix + "fuse.")]:
            state_dict[prefix + "merge." + key[len(prefix) + 5:]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def for_inference(self) -> LearnableResizer:
        """A copy for inference and export: evaluation mode, every BatchNorm that follows a convolution
        folded into it (residual blocks, merge), and the stem's BatchNorm folded through the resize as
        a per-channel affine map after it (``memory_efficient``), so no BatchNorm pass runs at all. Same
        outputs as ``self.eval()`` up to float rounding; ``torch.export.export(r.for_inference(),
        (x,))`` gives a graph for serving. Not for training: the folded layers have no BatchNorm."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        model = copy.deepcopy(self).eval()
        for block in model.res_blocks:
            block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), nn.Identity()
        model.merge = nn.Sequential(fuse_conv_bn_eval(model.merge[0], model.merge[1]), nn.Identity())
        model.memory_efficient = True
        return model

    def extra_repr(self) -> str:
        return (f"size={self.size}, interpolation={self.interpolation.value}, antialias={self.antialias}, "
                f"memory_efficient={self.memory_efficient}, cpu_kernels={self.cpu_kernels}")
