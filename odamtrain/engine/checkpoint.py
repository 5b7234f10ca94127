"""Checkpoints that load under ``torch.load(weights_only=True)``.

* :func:`to_plain` turns what mmengine puts in a checkpoint (numpy arrays and scalars,
  ``HistoryBuffer``) into tensors and Python builtins, so odamtrain's checkpoints load with a
  plain ``torch.load(path, weights_only=True)``; :func:`from_plain` restores the
  ``HistoryBuffer`` objects for ``--resume``.
* :func:`safe_load_checkpoint` reads foreign mmengine/mmdet checkpoints through a narrow
  allow-list: numpy array/dtype/scalar reconstruction and ``HistoryBuffer``. mmengine pickles
  ``HistoryBuffer``'s statistic methods as ``getattr(HistoryBuffer, 'min')``; instead of
  ``builtins.getattr`` the allow-list holds :func:`_history_buffer_method` under that name,
  which resolves only those four methods. Nothing that turns a pickle into code (``getattr``
  on other objects, ``eval``, ``os.*``, ``subprocess``) is ever allowed; weights_only stays on.
"""
from __future__ import annotations

import os.path as osp
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['CheckpointSecurityError', 'safe_load_checkpoint', 'to_plain', 'from_plain',
           'FOREIGN_CHECKPOINT_ALLOWLIST']

_HISTORY_BUFFER_KEY = '__mmengine_history_buffer__'
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


class CheckpointSecurityError(pickle.UnpicklingError):
    """A checkpoint whose pickle asks for something outside the allow-list."""


def _history_buffer_method(owner, name: str):
    """Stand-in for ``builtins.getattr`` while unpickling: only
    ``getattr(HistoryBuffer, 'min' | 'max' | 'current' | 'mean')``."""
    if owner is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise CheckpointSecurityError(
        f'refused getattr({owner!r}, {name!r}): only HistoryBuffer statistics are allowed')


def _numpy_globals() -> list:
    from numpy._core import multiarray
    allowed = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
               (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
               (multiarray.scalar, 'numpy.core.multiarray.scalar')]
    # numpy >= 1.25 pickles dtypes of arrays as instances of numpy.dtypes.*DType classes.
    allowed += [type(np.dtype(c)) for c in np.typecodes['All'] if c not in 'OV']
    return allowed


FOREIGN_CHECKPOINT_ALLOWLIST = _numpy_globals() + [
    HistoryBuffer, (_history_buffer_method, 'builtins.getattr')]


def safe_load_checkpoint(filename: str, map_location=None):
    """``torch.load(filename, weights_only=True)`` with :data:`FOREIGN_CHECKPOINT_ALLOWLIST`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointSecurityError: the pickle references a global outside the allow-list (the
            message names the file and the global); nothing of it has been executed.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} can not be found')
    try:
        with torch.serialization.safe_globals(FOREIGN_CHECKPOINT_ALLOWLIST):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).split('\n')[-1].strip() or str(e)
        for line in str(e).splitlines():
            if 'GLOBAL' in line or 'refused' in line or 'unrecognized' in line:
                reason = line.strip()
                break
        raise CheckpointSecurityError(
            f'refused to load checkpoint {filename}: its pickle needs something outside '
            f'the weights-only allow-list ({reason}). Only load checkpoints from sources '
            'you trust; odamtrain never disables weights_only.') from None


def to_plain(obj):
    """Recursively replace numpy arrays by tensors, numpy scalars by Python numbers and
    ``HistoryBuffer`` by a tagged dict of tensors (``weights_only``-loadable)."""
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {_HISTORY_BUFFER_KEY: dict(log=torch.from_numpy(np.asarray(log, np.float64)),
                                          count=torch.from_numpy(np.asarray(count, np.int64)),
                                          max_length=int(obj.max_length))}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, to_plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj):
    """Inverse of :func:`to_plain` for ``HistoryBuffer`` (arrays stay tensors)."""
    if isinstance(obj, dict):
        if set(obj) == {_HISTORY_BUFFER_KEY}:
            hb = obj[_HISTORY_BUFFER_KEY]
            return HistoryBuffer(hb['log'].numpy(), hb['count'].numpy(), hb['max_length'])
        return type(obj)((k, from_plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v) for v in obj)
    return obj


def register_safe_local_loader() -> None:
    """Make :func:`safe_load_checkpoint` mmengine's loader for local paths (idempotent)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', force=True)(safe_load_checkpoint)
