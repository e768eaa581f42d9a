"""Feature-level fusion of verified private models into a MetaModel (paper section IV-D).

Pure torch: knows nothing of chains, storage or files.
"""

from coopml.fusion.late import LateFusion
from coopml.fusion.metamodel import FitReport, FusionConfig, FusionError, MetaModel, Strategy, fuse

__all__ = ["FitReport", "FusionConfig", "FusionError", "LateFusion", "MetaModel", "Strategy", "fuse"]
