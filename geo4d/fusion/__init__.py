"""Multi-modal alignment and global fusion of overlapping window predictions (see docs/fusion.md).

Pure computation (no Prefect, no storage): :func:`fuse` reads ``arr[g]`` from any array-likes.

    >>> from geo4d.fusion import FusionConfig, FusionResult, fuse
    >>> result = fuse(windows, starts, n_frames, config=FusionConfig())  # doctest: +SKIP
"""

from geo4d.fusion.config import FusionConfig, FusionResult
from geo4d.fusion.core import fuse
from geo4d.fusion.depth import DepthSource

__all__ = ["DepthSource", "FusionConfig", "FusionResult", "fuse"]
