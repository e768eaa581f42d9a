"""The task as data: the versioned, content-addressed task manifest every agent reads (docs/tasks.md)."""

from coopml.task.manifest import (
    MANIFEST_VERSION,
    Criterion,
    Economics,
    FusionSpec,
    ManifestError,
    ModelRequirements,
    TaskManifest,
    Verification,
    Windows,
    builtin_manifest,
    builtin_names,
)

__all__ = ["MANIFEST_VERSION", "Criterion", "Economics", "FusionSpec", "ManifestError", "ModelRequirements",
           "TaskManifest", "Verification", "Windows", "builtin_manifest", "builtin_names"]
