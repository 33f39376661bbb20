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
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FixedResizer", "Interpolation", "LearnableResizer", "resize"]


class Interpolation(str, enum.Enum):
    """Interpolation of the fixed resizes inside the module (values match torchvision's ``InterpolationMode``)."""

    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    NEAREST = "nearest"


def _to_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        raise TypeError(f"size must be an int or a (height, width) pair of ints, got {size!r}")
    if min(size) < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    return int(size[0]), int(size[1])


def _to_interpolation(interpolation: str | enum.Enum) -> Interpolation:
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
    # Antialiasing only changes a downscale; PyTorch implements it for bilinear and bicubic alone.
    return F.interpolate(x, size=size, mode=interpolation.value, align_corners=False, antialias=antialias)


class FixedResizer(nn.Module):
    """The fixed baseline in the resizer's place: a plain resize to ``size``, no parameters.

    Args:
        size: Output size, an int for a square or ``(height, width)``.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        antialias: Low-pass filter a downscale, as torchvision's ``Resize`` does by default.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        interpolation: str | Interpolation = Interpolation.BILINEAR,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        self.size = _to_size(size)
        self.interpolation = _to_interpolation(interpolation)
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
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


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
            like ``torchvision.transforms.v2.Resize(antialias=True)``.
        negative_slope: Slope of the LeakyReLU activations (0.2 in the paper).
        zero_init: Zero the last 7x7 convolution, so that the module starts out as exactly the fixed
            resize and learns a residual on top of it.
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

    def __init__(
        self,
        size: int | tuple[int, int],
        num_filters: int = 16,
        num_res_blocks: int = 1,
        interpolation: str | Interpolation = Interpolation.BILINEAR,
        antialias: bool = False,
        negative_slope: float = 0.2,
        zero_init: bool = False,
        in_channels: int = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_filters, int) or num_filters < 1:
            raise ValueError(f"num_filters must be a positive int, got {num_filters!r}")
        if not isinstance(num_res_blocks, int) or num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be a non-negative int, got {num_res_blocks!r}")
        self.size = _to_size(size)
        self.interpolation = _to_interpolation(interpolation)
        self.antialias = bool(antialias)
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
        self.fuse = nn.Sequential(
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
        skip = self._resize(x)  # (N, 3, h, w)
        f = self._resize(self.stem(x))  # (N, n, h, w)
        y = self.fuse(self.res_blocks(f)) + f  # (N, n, h, w)
        return self.head(y) + skip  # (N, 3, h, w)

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation.value}, antialias={self.antialias}"
