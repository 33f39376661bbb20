"""dali_resizer: NVIDIA DALI loading at native resolution, feeding a learnable resizer in PyTorch.

Importing this package needs torch only; DALI is imported when a loader is iterated.
"""

from dali_resizer.loader import DALILoader
from dali_resizer.resizer import FixedResizer, Interpolation, LearnableResizer, MullerResizer
from dali_resizer.synthetic import make_synthetic_folder

__all__ = ["DALILoader", "FixedResizer", "Interpolation", "LearnableResizer", "MullerResizer",
           "make_synthetic_folder"]
__version__ = "0.1.0"
