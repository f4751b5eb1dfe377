"""Small file helpers: atomic writes (JSON manifests, any bytes) and file hashes."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is always either its old content or all of ``data``.

    The bytes go to ``<path>.tmp`` in the same folder, are fsynced, renamed over ``path``
    (``os.replace``, atomic on POSIX) and the folder is fsynced so the rename survives a crash.
    On an error the temp file is removed and ``path`` is untouched.
    """
    tmp = f'{path}.tmp'
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` with ``write_bytes_atomic``."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode('utf-8'))


def read_json(path: str, what: str, fix: str) -> Any:
    """Parse the JSON file ``path``; a corrupt file is a ``ValueError`` naming ``what`` it is and the caller's ``fix``."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f'{what} {path} is not valid JSON ({e}); {fix}') from None


def sha256_file(path: str, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
