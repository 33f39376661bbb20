"""MixUp and CutMix on a delivered batch, on its device, with soft targets; padding rows left out.

As torchvision's ``v2.MixUp`` / ``v2.CutMix`` and timm's ``Mixup`` do, each batch is mixed with itself
rolled by one: row ``i`` takes ``1 - lam`` of row ``i - 1``. Those take every row as a sample, and a
loader's padding rows (label ``PAD_LABEL``, see ``dali_resizer.real_mask``) are not: here only real rows
are mixed, each with the previous real row, and a padding row keeps its pixels and gets a target of
zeros, which :func:`soft_target_cross_entropy` leaves out of the mean.

The draws (which of MixUp and CutMix, ``lam``, the box) come from a NumPy generator seeded with ``seed``;
its state is in :meth:`MixUpCutMix.state_dict`, so a resumed run mixes its batches as the
uninterrupted one did.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dali_resizer.samples import PAD_LABEL

__all__ = ["MixUpCutMix", "soft_target_cross_entropy"]


class MixUpCutMix:
    """``(images, labels) -> (images, targets)``: a batch mixed by MixUp or CutMix, and its soft targets.

    Args:
        num_classes: the targets' width.
        mixup_alpha: MixUp's Beta(alpha, alpha) for ``lam`` (0: no MixUp). torchvision's reference uses 0.2.
        cutmix_alpha: CutMix's Beta(alpha, alpha) (0: no CutMix); the box covers ``1 - lam`` of the image,
            clipped at its borders, and ``lam`` is then the share the box leaves (reference: 1.0).
        switch_prob: with both on, the probability that a batch is mixed by CutMix rather than MixUp.
        prob: the probability that a batch is mixed at all.
        label_smoothing: the targets' smoothing before mixing (as ``CrossEntropyLoss(label_smoothing=)``).
        seed: the draws' seed.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 switch_prob: float = 0.5, prob: float = 1.0, label_smoothing: float = 0.0, seed: int = 0) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0 (0: off), got {value!r}")
        for name, value in (("switch_prob", switch_prob), ("prob", prob), ("label_smoothing", label_smoothing)):
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.switch_prob, self.prob, self.label_smoothing = float(switch_prob), float(prob), float(label_smoothing)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.last: dict = {}  # what the last call did: {"kind": "mixup" | "cutmix" | None, "lam": ...}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
                f"cutmix_alpha={self.cutmix_alpha}, switch_prob={self.switch_prob}, prob={self.prob})")

    def reseed(self, *keys: int) -> None:
        """Seeds the draws from ``seed`` and ``keys`` (e.g. the epoch and the batch's index), so that a
        batch is mixed the same way however the run got there (a resume included)."""
        self.rng = np.random.default_rng([self.seed, *map(int, keys)])

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def _uniform(self) -> float:
        return float(self.rng.random())

    def _beta(self, alpha: float) -> float:
        return float(self.rng.beta(alpha, alpha))

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """One-hot (smoothed) targets ``(N, num_classes)`` in float32; a padding row's are zeros."""
        real = labels != PAD_LABEL
        out = torch.zeros(labels.shape[0], self.num_classes, dtype=torch.float32, device=labels.device)
        out[real] = self.label_smoothing / self.num_classes
        out[real, labels[real]] += 1 - self.label_smoothing
        return out

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = self.targets(labels)
        self.last = {"kind": None, "lam": 1.0}
        on = [kind for kind, alpha in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if alpha > 0]
        if not on:
            return images, targets
        mixed = self._uniform() < self.prob
        kind = on[0] if len(on) == 1 else ("cutmix" if self._uniform() < self.switch_prob else "mixup")
        lam = self._beta(self.mixup_alpha if kind == "mixup" else self.cutmix_alpha)
        box = self._box(lam, images.shape[-2], images.shape[-1]) if kind == "cutmix" else None  # (drawn always)
        rows = (labels != PAD_LABEL).nonzero().view(-1)
        if not mixed or rows.numel() < 2:
            return images, targets
        partner = rows.roll(1)  # each real row takes from the real row before it
        if kind == "mixup":  # one gather and one pass: lam * row + (1 - lam) * partner; a padding row is its own
            source = torch.arange(labels.shape[0], device=rows.device)
            source[rows] = partner
            out = images[source].lerp_(images, lam)  # (lerp(x, x, lam) is x exactly)
        else:
            top, bottom, left, right = box
            out = images.clone()
            out[rows, :, top:bottom, left:right] = images[partner, :, top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / (images.shape[-2] * images.shape[-1])
        targets[rows] = lam * targets[rows] + (1 - lam) * targets[partner]
        self.last = {"kind": kind, "lam": lam, **({"box": box} if box is not None else {})}
        return out, targets

    def _box(self, lam: float, height: int, width: int) -> tuple[int, int, int, int]:
        """CutMix's box, ``(top, bottom, left, right)``: ``1 - lam`` of the area around a uniform center,
        clipped at the borders (torchvision's ``v2.CutMix``)."""
        cy, cx = int(self._uniform() * height), int(self._uniform() * width)
        ratio = math.sqrt(1 - lam)
        half_h, half_w = int(ratio * height / 2), int(ratio * width / 2)
        return max(cy - half_h, 0), min(cy + half_h, height), max(cx - half_w, 0), min(cx + half_w, width)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against soft targets ``(N, C)``, averaged (``reduction="mean"``) or summed (``"sum"``)
    over the rows that have a target: a padding row's zeros are left out, as ``ignore_index`` leaves out
    ``PAD_LABEL``."""
    per_row = -(targets * torch.log_softmax(logits.float(), dim=1)).sum(dim=1)
    total = per_row.sum()  # (a padding row's terms are all zero)
    if reduction == "sum":
        return total
    return total / (targets.sum(dim=1) > 0).sum().clamp(min=1)
