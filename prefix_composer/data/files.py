"""Small file helpers: atomic JSON manifests and file hashes."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temp file + ``os.replace`` (never half-written)."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str, what: str) -> Any:
    """Parse the JSON file ``path``; a corrupt file is a ``ValueError`` naming ``what`` it is."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f'{what} {path} is not valid JSON ({e}); delete it or rerun with --overwrite.') from None


def sha256_file(path: str, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
