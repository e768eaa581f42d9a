"""Setup step: copy the pinned dataset files into the data cache and verify them (idempotent)."""

from __future__ import annotations

import shutil
import sys

from coopml.data.datasets import REGISTRY, data_dir, sha256_file, source_root
from coopml.errors import DataError


def fetch(name: str, required: bool) -> bool:
    dest = data_dir(name)
    dest.mkdir(parents=True, exist_ok=True)
    for spec in REGISTRY[name].values():
        target = dest / spec.name
        if target.is_file() and sha256_file(target) == spec.sha256:
            continue
        src = source_root(name) / spec.origin
        if not src.is_file():
            if required:
                raise DataError(f"{src}: missing; the package providing dataset {name!r} is not installed")
            print(f"[setup] {name}: {src} not found, skipping (optional)")
            return False
        digest = sha256_file(src)
        if digest != spec.sha256:
            raise DataError(f"{src}: sha256 {digest} != pinned {spec.sha256}; refusing a corrupted dataset")
        tmp = target.with_suffix(target.suffix + ".part")
        shutil.copyfile(src, tmp)
        tmp.replace(target)
        print(f"[setup] {name}: {spec.name} verified")
    return True


def main() -> int:
    try:
        fetch("mnist", required=True)
        fetch("fashion-mnist", required=False)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
