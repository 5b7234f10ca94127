"""Atomic file writes: write to a temporary file in the target folder, then rename.

A process killed mid-write leaves the previous file intact (``os.replace`` is atomic on
POSIX and Windows within one file system); the temporary file it leaves behind
(``.<name>.<random>.tmp``) is recognised by :func:`remove_stale_temp_files`.
"""
from __future__ import annotations

import functools
import io
import os
import os.path as osp
import re
import tempfile

from mmengine.config import Config
from mmengine.fileio import io as mm_io
from mmengine.fileio.backends import LocalBackend, register_backend

__all__ = ['atomic_write_bytes', 'atomic_write_text', 'atomic_write_figure', 'AtomicTextFile',
           'AtomicLocalBackend', 'register_atomic_local_writes', 'remove_stale_temp_files']

# mkstemp's names: prefix '.<basename>.', 8 random characters, suffix '.tmp'
_TEMP_NAME = re.compile(r'\..+\.[a-z0-9_]{8}\.tmp')


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``: a reader (or a
    kill) sees the old file or the new one, never a part.

    Args:
        data: the content.
        path: the file (its folder is created).
    """
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
    """Text version of :func:`atomic_write_bytes`.

    Args:
        text: the content.
        path: the file.
        encoding: of the text.
    """
    atomic_write_bytes(text.encode(encoding), path)


def atomic_write_figure(fig, path: str, dpi: int = 100) -> None:
    """A matplotlib figure as a PNG, written atomically.

    Args:
        fig: a matplotlib figure.
        path: the PNG file.
        dpi: its resolution.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=dpi)
    atomic_write_bytes(buf.getvalue(), path)


class AtomicTextFile(io.StringIO):
    """A text file opened for writing whose content replaces ``path`` atomically when it is
    closed without an error (``with AtomicTextFile(path) as f: f.write(...)``).

    Args:
        path: the file to replace.
        encoding: of the text.
    """

    def __init__(self, path: str, encoding: str = 'utf-8'):
        super().__init__()
        self.path, self.encoding_ = path, encoding

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            atomic_write_text(self.getvalue(), self.path, self.encoding_)
        return super().__exit__(exc_type, exc, tb)


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete the temporary files that killed atomic writes left under ``folder``
    (recursively). Call it only where no write is in progress.

    Args:
        folder: the folder.

    Returns:
        list[str]: the deleted paths.
    """
    removed = []
    for root, _, files in os.walk(folder):
        for name in files:
            if _TEMP_NAME.fullmatch(name):
                path = osp.join(root, name)
                os.remove(path)
                removed.append(path)
    return removed


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes are atomic (checkpoints via
    ``mmengine.runner.save_checkpoint``, metric result files, non-Python config dumps)."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write_text(obj, filepath, encoding)


def _atomic_config_dump(dump):
    """``Config.dump`` whose ``.py`` files (the work dir's and ``vis_data/config.py``) are
    written atomically; mmengine opens them with truncation."""
    @functools.wraps(dump)
    def wrapper(self, file=None):
        if file is not None and os.fspath(file).endswith('.py'):
            atomic_write_text(self.pretty_text, os.fspath(file))
            return None
        return dump(self, file)
    wrapper.atomic = True
    return wrapper


def register_atomic_local_writes() -> None:
    """Make mmengine's local writes atomic (idempotent): :class:`AtomicLocalBackend` is its
    backend for local paths and ``Config.dump`` writes ``.py`` files atomically."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    # Drop cached plain LocalBackend instances so later lookups build the atomic one.
    for key in [k for k, v in mm_io.backend_instances.items() if type(v) is LocalBackend]:
        del mm_io.backend_instances[key]
    if not getattr(Config.dump, 'atomic', False):
        Config.dump = _atomic_config_dump(Config.dump)
