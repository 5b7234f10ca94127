"""Checkpoints: weights-only loading of foreign checkpoints, and saving that needs no allow-list.

* :func:`safe_load_checkpoint` reads mmengine / mmdet checkpoints with
  ``torch.load(weights_only=True)``. Such checkpoints pickle numpy arrays, dtypes and scalars
  and mmengine's ``HistoryBuffer``. None of those is ever built by the unpickler: their names
  resolve to inert *recipes* (:class:`_Recipe`) that only record their arguments, and after
  the load each recipe is checked and turned into a plain numeric numpy object or a fresh
  ``HistoryBuffer`` (:func:`_materialise`). Nothing of numpy's or mmengine's reconstruction
  code runs on data from the file, so a pickle cannot forge an object array (pointers read
  from the file), a datetime or structured dtype, a buffer that does not match its shape, or
  change ``HistoryBuffer``'s class-level statistics.
* :func:`to_plain` turns what mmengine puts in a checkpoint into tensors and Python builtins,
  so odamtrain's own checkpoints load with a plain ``torch.load(path, weights_only=True)``;
  :func:`from_plain` restores the ``HistoryBuffer`` objects (checked) for ``--resume``.
"""
from __future__ import annotations

import contextlib
import math
import os.path as osp
import pickle
import re

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = ['CheckpointError', 'CheckpointSecurityError', 'safe_load_checkpoint', 'to_plain',
           'from_plain', 'register_safe_local_loader']

_HISTORY_BUFFER_KEY = '__mmengine_history_buffer__'
_STATISTICS = ('min', 'max', 'current', 'mean')
# numpy dtype strings a checkpoint may use: bool, signed / unsigned ints, floats, complex
_NUMERIC_DTYPE = re.compile(r'(b1|[iu][1248]|f(2|4|8|16)|c(8|16|32))')


class CheckpointError(pickle.UnpicklingError):
    """A checkpoint that cannot be loaded (corrupt, truncated or refused); names the file."""


class CheckpointSecurityError(CheckpointError):
    """A checkpoint whose pickle asks for something outside the weights-only allow-list."""


class _Refused(Exception):
    """Raised inside the unpickler by the stand-ins (torch re-wraps UnpicklingError only)."""


# ------------------------------------------------------------------ inert stand-ins
class _Recipe:
    """What the unpickler builds for an allowed numpy / mmengine name: a record of the
    arguments and of the one ``BUILD`` state, with no behaviour."""
    args: tuple | None = None
    state = None
    built = False

    def __setstate__(self, state):
        if self.built:
            raise _Refused(f'{self.describe()} built twice')
        self.state, self.built = state, True

    def describe(self) -> str:
        return self.name


class _NdarrayRecipe(_Recipe):
    """``numpy.ndarray``: only the ``_reconstruct(ndarray, (0,), b'b')`` + BUILD route of
    numpy's pickles; a direct call would make an array over raw memory from the file."""
    name = 'numpy.ndarray'

    def __init__(self, *args, **kwargs):
        raise _Refused('numpy.ndarray(...) called directly (an array over raw bytes of the '
                       'file); only numpy\'s own pickle route is allowed')


class _DtypeRecipe(_Recipe):
    """``numpy.dtype(spec, align, copy)``."""
    name = 'numpy.dtype'

    def __init__(self, *args):
        self.args = args


class _ScalarRecipe(_Recipe):
    """``numpy._core.multiarray.scalar(dtype, data)``."""
    name = 'numpy scalar'

    def __init__(self, *args):
        self.args = args


class _HistoryBufferRecipe(_Recipe):
    """``mmengine.logging.HistoryBuffer`` (``NEWOBJ`` + BUILD of its ``__dict__``)."""
    name = 'HistoryBuffer'


class _StatisticName(_Recipe):
    """What ``getattr(HistoryBuffer, 'min' | 'max' | 'current' | 'mean')`` gives during a
    load: the name only, never the function (torch's ``_rebuild_from_type_v2(func, ...)``
    would call it)."""
    name = 'HistoryBuffer statistic'

    def __init__(self, statistic: str):
        self.statistic = statistic

    def __call__(self, *args, **kwargs):
        raise _Refused(f'HistoryBuffer.{self.statistic} called during the load')


def _reconstruct(cls, shape, typecode):
    if cls is not _NdarrayRecipe or shape != (0,) or typecode != b'b':
        raise _Refused(f'numpy _reconstruct({getattr(cls, "name", cls)!r}, {shape!r}, '
                       f'{typecode!r}): only plain numpy arrays are allowed')
    return _NdarrayRecipe.__new__(_NdarrayRecipe)


def _scalar(*args):
    return _ScalarRecipe(*args)


def _getattr(owner, name):
    """Stand-in for ``builtins.getattr``: only HistoryBuffer's four statistics, by name."""
    if owner is _HistoryBufferRecipe and name in _STATISTICS:
        return _StatisticName(name)
    raise _Refused(f'refused getattr({getattr(owner, "name", owner)!r}, {name!r}): only '
                   'HistoryBuffer statistics are allowed')


def _stand_ins() -> list:
    """(stand-in, pickled name) pairs: the only globals a checkpoint may name beyond torch's."""
    pairs = [(_NdarrayRecipe, 'numpy.ndarray'), (_DtypeRecipe, 'numpy.dtype'),
             (_HistoryBufferRecipe, 'mmengine.logging.history_buffer.HistoryBuffer'),
             (_getattr, 'builtins.getattr')]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # numpy 1.x / 2.x
        pairs += [(_reconstruct, f'{module}._reconstruct'), (_scalar, f'{module}.scalar')]
    return pairs


@contextlib.contextmanager
def _only_stand_ins():
    """Inside, torch's user safe globals are exactly :func:`_stand_ins`; the caller's own
    safe globals are restored afterwards, unchanged."""
    users = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(_stand_ins())
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(users)


# ---------------------------------------------------------------- checked building
def _build_dtype(recipe: _DtypeRecipe) -> np.dtype:
    args, state = recipe.args, recipe.state
    if (not isinstance(args, tuple) or len(args) != 3 or type(args[0]) is not str
            or not all(type(a) is bool for a in args[1:])):
        raise _Refused(f'numpy.dtype{args!r}: expected (type string, align, copy)')
    spec = args[0]
    if not _NUMERIC_DTYPE.fullmatch(spec):
        raise _Refused(f'numpy dtype {spec!r}: only bool, integer, float and complex dtypes '
                       'are allowed (no object, string, void, structured or datetime)')
    if isinstance(state, tuple) and len(state) == 9:
        raise _Refused(f'numpy dtype {spec!r} with metadata {state[8]!r}')
    if (not isinstance(state, tuple) or len(state) != 8 or state[0] != 3
            or state[1] not in ('<', '>', '|', '=') or state[2:] != (None, None, None, -1, -1, 0)):
        raise _Refused(f'numpy dtype {spec!r} with state {state!r}: expected a plain numeric '
                       "dtype (version 3, byte order '<', '>', '|' or '=', no fields)")
    dtype = np.dtype(spec)
    return dtype.newbyteorder(state[1]) if state[1] in '<>' else dtype


def _build_array(recipe: _NdarrayRecipe, memo: dict) -> np.ndarray:
    state = recipe.state
    if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
        raise _Refused(f'numpy array state {type(state).__name__}: expected (1, shape, dtype, '
                       'fortran, bytes)')
    _, shape, dtype, fortran, raw = state
    if (not isinstance(shape, tuple) or not all(type(s) is int and s >= 0 for s in shape)
            or type(fortran) is not bool):
        raise _Refused(f'numpy array of shape {shape!r}: expected non-negative ints')
    if not isinstance(dtype, _DtypeRecipe):
        raise _Refused(f'numpy array dtype {type(dtype).__name__}: expected a numpy dtype')
    dtype = _materialise(dtype, memo)
    if type(raw) is not bytes:
        raise _Refused(f'numpy array data {type(raw).__name__}: expected bytes (an object '
                       'array pickles a list)')
    count = math.prod(shape)
    if count * dtype.itemsize != len(raw):
        raise _Refused(f'numpy array of shape {shape} and dtype {dtype} needs '
                       f'{count * dtype.itemsize} bytes, the file gives {len(raw)}')
    flat = np.frombuffer(raw, dtype=dtype, count=count)
    return flat.reshape(shape, order='F' if fortran else 'C').copy(order='K')


def _build_scalar(recipe: _ScalarRecipe, memo: dict):
    args = recipe.args
    if (not isinstance(args, tuple) or len(args) != 2 or not isinstance(args[0], _DtypeRecipe)
            or type(args[1]) is not bytes):
        raise _Refused('numpy scalar: expected (dtype, bytes)')
    dtype = _materialise(args[0], memo)
    if len(args[1]) != dtype.itemsize:
        raise _Refused(f'numpy scalar of dtype {dtype} needs {dtype.itemsize} bytes, the file '
                       f'gives {len(args[1])}')
    return np.frombuffer(args[1], dtype=dtype)[0]


def _build_history_buffer(recipe: _HistoryBufferRecipe, memo: dict) -> HistoryBuffer:
    state = recipe.state
    allowed = {'max_length', '_log_history', '_count_history', 'statistics_methods'}
    if type(state) is not dict or not set(state) <= allowed or 'max_length' not in state:
        keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise _Refused(f'HistoryBuffer state {keys}: expected {sorted(allowed)}')
    methods = state.get('statistics_methods', {})
    if type(methods) is not dict:
        raise _Refused(f'HistoryBuffer statistics_methods {type(methods).__name__}: expected '
                       'a dict')
    for name, method in methods.items():
        if not (isinstance(method, _StatisticName) and method.statistic == name):
            raise _Refused(f'HistoryBuffer statistic {name!r} -> '
                           f'{getattr(method, "statistic", method)!r}: only mmengine\'s own '
                           f'{_STATISTICS} under their own names are allowed')
    logs = [_materialise(state.get(k, _empty_log()), memo)
            for k in ('_log_history', '_count_history')]
    return _checked_history_buffer(*logs, state['max_length'])


def _empty_log():
    return np.zeros(0)


def _checked_history_buffer(log, count, max_length) -> HistoryBuffer:
    """A new HistoryBuffer (its ``__init__``; never ``__setstate__``) from checked logs."""
    for name, arr in (('log', log), ('count', count)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.kind not in 'biuf':
            raise _Refused(f'HistoryBuffer {name} history: expected a 1-D numeric array, got '
                           f'{getattr(arr, "shape", type(arr).__name__)}')
    if len(log) != len(count):
        raise _Refused(f'HistoryBuffer histories of {len(log)} and {len(count)} values')
    if type(max_length) is not int or max_length < 1:
        raise _Refused(f'HistoryBuffer max_length {max_length!r}: expected an int >= 1')
    return HistoryBuffer(log, count, max_length)


_BUILDERS = {_NdarrayRecipe: _build_array, _ScalarRecipe: _build_scalar,
             _HistoryBufferRecipe: _build_history_buffer}


def _materialise(obj, memo: dict):
    """The loaded object with every recipe replaced by its checked numpy / HistoryBuffer
    object (dicts and lists in place; shared and cyclic references kept)."""
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, _DtypeRecipe):
        result = memo[key] = _build_dtype(obj)
    elif type(obj) in _BUILDERS:
        if not obj.built and type(obj) is not _ScalarRecipe:  # the others come with BUILD
            raise _Refused(f'{obj.describe()} without its state')
        result = memo[key] = _BUILDERS[type(obj)](obj, memo)
    elif isinstance(obj, _Recipe):
        raise _Refused(f'{obj.describe()} outside the object it belongs to')
    elif isinstance(obj, dict):
        memo[key] = result = obj
        items = list(obj.items())
        obj.clear()
        for k, v in items:
            obj[_materialise(k, memo)] = _materialise(v, memo)
    elif isinstance(obj, list):
        memo[key] = result = obj
        obj[:] = [_materialise(v, memo) for v in obj]
    elif isinstance(obj, (tuple, set)):
        result = memo[key] = type(obj)(_materialise(v, memo) for v in obj)
    else:  # tensors, numbers, strings and the other types torch's unpickler builds
        result = obj
    return result


def _torch_refusal(message: str) -> str:
    """The reason inside torch's re-wrapped weights-only error message."""
    for pattern, what in ((r'GLOBAL (\S+) was not an allowed global', 'global {} is not on '
                           'the allow-list'),
                          (r'GLOBAL (\S+) whose module \S+ is blocked', 'global {} is blocked')):
        m = re.search(pattern, message)
        if m:
            return what.format(m.group(1))
    body = message.split('WeightsUnpickler error:')[-1].split('\n\nCheck the documentation')[0]
    return ' '.join(body.split()) or message


def safe_load_checkpoint(filename: str, map_location=None):
    """Load a checkpoint weights-only, with numpy arrays / dtypes / scalars and mmengine
    ``HistoryBuffer`` s rebuilt from checked data (module docstring).

    Raises:
        FileNotFoundError: no such file.
        CheckpointSecurityError: the pickle asks for a global, a call or a value outside the
            allow-list (the message names the file and what was refused); nothing of it has
            been executed.
        CheckpointError: any other failure (truncated, corrupt, empty, nested too deeply),
            with the file and the cause.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} can not be found')
    refusal = ('refused to load checkpoint {}: {}. Only load checkpoints from sources you '
               'trust; odamtrain never disables weights_only')
    try:
        with _only_stand_ins():
            loaded = torch.load(filename, map_location=map_location, weights_only=True)
        return _materialise(loaded, {})
    except _Refused as e:
        raise CheckpointSecurityError(refusal.format(filename, e)) from None
    except pickle.UnpicklingError as e:
        raise CheckpointSecurityError(refusal.format(filename, _torch_refusal(str(e)))) from None
    except RecursionError:
        raise CheckpointError(f'cannot load checkpoint {filename}: its objects are nested too '
                              'deeply') from None
    except Exception as e:  # torch / zipfile raise many types for broken files
        cause = f'{type(e).__name__}: {e}' if str(e) else type(e).__name__
        if isinstance(e, EOFError) and osp.getsize(filename) == 0:
            cause = 'the file is empty'
        raise CheckpointError(f'cannot load checkpoint {filename}: {cause}') from None


# ----------------------------------------------------------------- plain checkpoints
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


def _plain_log(t) -> np.ndarray:
    """A tagged HistoryBuffer log tensor -> numpy, refusing views that are larger than their
    storage (a stride-0 tensor of 10^12 elements is a few bytes in the file)."""
    if not torch.is_tensor(t) or t.dim() != 1 or not t.is_contiguous():
        raise CheckpointError(f'HistoryBuffer log in a plain checkpoint: expected a 1-D '
                              f'contiguous tensor, got {getattr(t, "shape", type(t).__name__)}')
    return t.numpy()


def from_plain(obj):
    """Inverse of :func:`to_plain` for ``HistoryBuffer`` (arrays stay tensors); the tagged
    dicts are checked (:class:`CheckpointError` names what is wrong)."""
    if isinstance(obj, dict):
        if set(obj) == {_HISTORY_BUFFER_KEY}:
            hb = obj[_HISTORY_BUFFER_KEY]
            if not isinstance(hb, dict) or set(hb) != {'log', 'count', 'max_length'}:
                raise CheckpointError('HistoryBuffer in a plain checkpoint: expected log, '
                                      'count and max_length')
            try:
                return _checked_history_buffer(_plain_log(hb['log']), _plain_log(hb['count']),
                                               hb['max_length'])
            except _Refused as e:
                raise CheckpointError(f'plain checkpoint: {e}') from None
        return type(obj)((k, from_plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v) for v in obj)
    return obj


def register_safe_local_loader() -> None:
    """Make :func:`safe_load_checkpoint` mmengine's loader for local paths (idempotent)."""
    CheckpointLoader.register_scheme(prefixes='', force=True)(safe_load_checkpoint)
