"""dali_resizer: NVIDIA DALI loading at native resolution, feeding a learnable resizer in PyTorch.

The names below are imported on first use: ``import dali_resizer.samples`` (which ``pipelines/``
does) needs neither torch nor DALI, and importing the loader or the modules needs torch only; DALI is
imported when a loader is built.
"""

from __future__ import annotations

import importlib

__all__ = ["PAD_LABEL", "BadSampleError", "DALILoader", "FixedResizer", "Interpolation", "LearnableResizer",
           "MixUpCutMix", "MullerResizer", "TransformSpec", "make_synthetic_folder", "real_mask",
           "soft_target_cross_entropy"]
__version__ = "0.1.0"

_WHERE = {
    "DALILoader": "dali_resizer.loader",
    "FixedResizer": "dali_resizer.resizer",
    "Interpolation": "dali_resizer.resizer",
    "LearnableResizer": "dali_resizer.resizer",
    "MixUpCutMix": "dali_resizer.mix",
    "MullerResizer": "dali_resizer.muller",
    "TransformSpec": "dali_resizer.spec",
    "soft_target_cross_entropy": "dali_resizer.mix",
    "make_synthetic_folder": "dali_resizer.synthetic",
    "PAD_LABEL": "dali_resizer.samples",
    "BadSampleError": "dali_resizer.samples",
    "real_mask": "dali_resizer.samples",
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dali_resizer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
