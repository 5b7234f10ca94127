"""Atomic file writes: write to a temporary file in the target folder, then rename.

A process killed mid-write leaves the previous file intact (``os.replace`` is atomic on
POSIX and Windows within one file system).
"""
from __future__ import annotations

import os
import os.path as osp
import tempfile

from mmengine.fileio.backends import LocalBackend, register_backend

__all__ = ['atomic_write_bytes', 'atomic_write_text', 'AtomicLocalBackend']


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{osp.basename(path)}.', suffix='.tmp')
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; use what open() would
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(text: str, path: str, encoding: str = 'utf-8') -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(text.encode(encoding), path)


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes are atomic.

    Registered as mmengine's ``local`` backend when odamtrain is imported, so checkpoints
    (``mmengine.runner.save_checkpoint``), metric result files and dumped configs are all
    written to a temporary file and renamed.
    """

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write_text(obj, filepath, encoding)


def register_atomic_local_backend() -> None:
    """Make :class:`AtomicLocalBackend` mmengine's backend for local paths (idempotent)."""
    from mmengine.fileio import io as mm_io
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    # Drop cached plain LocalBackend instances so later lookups build the atomic one.
    for key in [k for k, v in mm_io.backend_instances.items() if type(v) is LocalBackend]:
        del mm_io.backend_instances[key]
