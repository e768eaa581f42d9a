"""Feature-level fusion of verified private models into a MetaModel (paper section IV-D).

Pure torch: knows nothing of chains or storage; the only file it knows is its own MetaModel
file format (`save_metamodel` / `load_metamodel`).
"""

from coopml.fusion.file import (
                                METAMODEL_VERSION,
                                MemberEntry,
                                MetaModelManifest,
                                load_metamodel,
                                metamodel_from_bytes,
                                metamodel_to_bytes,
                                read_manifest,
                                save_metamodel,
)
from coopml.fusion.fuser import (
                                FeatureCache,
                                FusionWorker,
                                IncrementalFuser,
                                RefitTiming,
)
from coopml.fusion.late import LateFusion
from coopml.fusion.members import (
                                FeatureExtractor,
                                FusionError,
                                MemberKind,
                                TorchMember,
                                as_member,
                                bytes_to_tensor,
                                member_kinds,
                                register_member_kind,
                                tensor_to_bytes,
)
from coopml.fusion.metamodel import (
                                FitReport,
                                FusionCancelled,
                                FusionConfig,
                                MetaModel,
                                Strategy,
                                fuse,
)

__all__ = [
                                "METAMODEL_VERSION",
                                "FeatureCache",
                                "FeatureExtractor",
                                "FitReport",
                                "FusionCancelled",
                                "FusionConfig",
                                "FusionError",
                                "FusionWorker",
                                "IncrementalFuser",
                                "LateFusion",
                                "MemberEntry",
                                "MemberKind",
                                "MetaModel",
                                "MetaModelManifest",
                                "RefitTiming",
                                "Strategy",
                                "TorchMember",
                                "as_member",
                                "bytes_to_tensor",
                                "fuse",
                                "load_metamodel",
                                "member_kinds",
                                "metamodel_from_bytes",
                                "metamodel_to_bytes",
                                "read_manifest",
                                "register_member_kind",
                                "save_metamodel",
                                "tensor_to_bytes",
]
