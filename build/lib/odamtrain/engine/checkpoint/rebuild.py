"""What a checkpoint's unpickled objects become: plain, checked data.

mmengine / mmdet checkpoints pickle numpy arrays, dtypes and scalars and mmengine's
``HistoryBuffer``. None of those is built by the unpickler: their names resolve to inert
*recipes* (:class:`_Recipe`, :func:`only_stand_ins`) that record their arguments, and
:class:`Rebuilder` turns each into a plain numeric numpy object or a fresh
``HistoryBuffer`` after checking it. Nothing of numpy's or mmengine's reconstruction code
runs on data from the file, so a pickle cannot forge an object array (pointers read from
the file), a datetime or structured dtype, a buffer that does not match its shape, or
change ``HistoryBuffer``'s class-level statistics.

The same pass makes the rest plain: tensors are fresh ``torch.Tensor`` views of their
storage (no attribute, hook, ``requires_grad`` or conjugate bit set by the file), a dict,
``OrderedDict`` or ``Counter`` keeps only its items, a state dict's ``_metadata`` only
``{'version': int}`` per module (``assign_to_params_buffers`` and the like are dropped),
shared objects stay shared, and nesting deeper than :data:`MAX_DEPTH`, cycles, views
larger than their storage and any type outside the list are refused. What it allocates
(arrays, logs, resolved views) is drawn from a byte budget.
"""
from __future__ import annotations

import contextlib
import math
import re
from collections import Counter, OrderedDict

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

from .errors import Refused

__all__ = ['Rebuilder', 'only_stand_ins', 'stand_in_names', 'HISTORY_BUFFER_KEY',
           'checked_history_buffer', 'MAX_DEPTH']

HISTORY_BUFFER_KEY = '__mmengine_history_buffer__'
MAX_DEPTH = 64
_STATISTICS = ('min', 'max', 'current', 'mean')
# numpy dtype strings a checkpoint may use: bool, signed / unsigned ints, floats, complex
_NUMERIC_DTYPE = re.compile(r'(b1|[iu][1248]|f(2|4|8|16)|c(8|16|32))')
_SCALARS = (str, bytes, int, float, complex, bool, type(None))
_LEAVES = (torch.device, torch.dtype, np.ndarray, np.generic, np.dtype, HistoryBuffer)
# log dtypes a plain HistoryBuffer may have (numpy has no bfloat16)
_LOG_DTYPES = (torch.float16, torch.float32, torch.float64, torch.int8, torch.int16,
               torch.int32, torch.int64, torch.uint8, torch.bool)


# ------------------------------------------------------------------ inert stand-ins
class _Recipe:
    """What the unpickler builds for an allowed numpy / mmengine name: a record of the
    arguments and of the one ``BUILD`` state, with no behaviour."""
    args: tuple | None = None
    state = None
    built = False

    def __setstate__(self, state):
        if self.built:
            raise Refused(f'{self.name} built twice')
        self.state, self.built = state, True


class _NdarrayRecipe(_Recipe):
    """``numpy.ndarray``: only the ``_reconstruct(ndarray, (0,), b'b')`` + BUILD route of
    numpy's pickles; a direct call would make an array over raw memory from the file."""
    name = 'numpy.ndarray'

    def __init__(self, *args, **kwargs):
        raise Refused('numpy.ndarray(...) called directly (an array over raw bytes of the '
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
        raise Refused(f'HistoryBuffer.{self.statistic} called during the load')


def _reconstruct(cls, shape, typecode):
    if cls is not _NdarrayRecipe or shape != (0,) or typecode != b'b':
        raise Refused(f'numpy _reconstruct({getattr(cls, "name", cls)!r}, {shape!r}, '
                      f'{typecode!r}): only plain numpy arrays are allowed')
    return _NdarrayRecipe.__new__(_NdarrayRecipe)


def _scalar(*args):
    return _ScalarRecipe(*args)


def _getattr(owner, name):
    """Stand-in for ``builtins.getattr``: only HistoryBuffer's four statistics, by name."""
    if owner is _HistoryBufferRecipe and name in _STATISTICS:
        return _StatisticName(name)
    raise Refused(f'refused getattr({getattr(owner, "name", owner)!r}, {name!r}): only '
                  'HistoryBuffer statistics are allowed')


def _stand_ins() -> list:
    """(stand-in, pickled name) pairs: the globals a checkpoint may name beyond torch's."""
    pairs = [(_NdarrayRecipe, 'numpy.ndarray'), (_DtypeRecipe, 'numpy.dtype'),
             (_HistoryBufferRecipe, 'mmengine.logging.history_buffer.HistoryBuffer'),
             (_getattr, 'builtins.getattr')]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # numpy 1.x / 2.x
        pairs += [(_reconstruct, f'{module}._reconstruct'), (_scalar, f'{module}.scalar')]
    return pairs


def stand_in_names() -> set[str]:
    """The dotted names :func:`only_stand_ins` answers."""
    return {name for _, name in _stand_ins()}


@contextlib.contextmanager
def only_stand_ins():
    """Inside, torch's user safe globals are exactly the stand-ins; the caller's own safe
    globals are restored afterwards, unchanged."""
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
        raise Refused(f'numpy.dtype{args!r}: expected (type string, align, copy)')
    spec = args[0]
    if not _NUMERIC_DTYPE.fullmatch(spec):
        raise Refused(f'numpy dtype {spec!r}: only bool, integer, float and complex dtypes '
                      'are allowed (no object, string, void, structured or datetime)')
    if isinstance(state, tuple) and len(state) == 9:
        raise Refused(f'numpy dtype {spec!r} with metadata {state[8]!r}')
    if (not isinstance(state, tuple) or len(state) != 8 or state[0] != 3
            or state[1] not in ('<', '>', '|', '=') or state[2:] != (None, None, None, -1, -1, 0)):
        raise Refused(f'numpy dtype {spec!r} with state {state!r}: expected a plain numeric '
                      "dtype (version 3, byte order '<', '>', '|' or '=', no fields)")
    dtype = np.dtype(spec)
    return dtype.newbyteorder(state[1]) if state[1] in '<>' else dtype


def checked_history_buffer(log, count, max_length) -> HistoryBuffer:
    """A new HistoryBuffer (its ``__init__``; never ``__setstate__``) from checked logs."""
    for name, arr in (('log', log), ('count', count)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.kind not in 'biuf':
            raise Refused(f'HistoryBuffer {name} history: expected a 1-D numeric array, got '
                          f'{getattr(arr, "shape", type(arr).__name__)}')
    if len(log) != len(count):
        raise Refused(f'HistoryBuffer histories of {len(log)} and {len(count)} values')
    if type(max_length) is not int or max_length < 1:
        raise Refused(f'HistoryBuffer max_length {max_length!r}: expected an int >= 1')
    return HistoryBuffer(log, count, max_length)


def _plain_log(t) -> np.ndarray:
    """A tagged HistoryBuffer log tensor -> numpy (shares its memory)."""
    if not torch.is_tensor(t) or t.dim() != 1 or not t.is_contiguous():
        raise Refused(f'HistoryBuffer log of a plain checkpoint: expected a 1-D contiguous '
                      f'tensor, got {getattr(t, "shape", type(t).__name__)}')
    if t.dtype not in _LOG_DTYPES:
        raise Refused(f'HistoryBuffer log of dtype {t.dtype}: expected a float, int or bool '
                      'dtype that numpy has')
    return t.cpu().numpy()


class Rebuilder:
    """One pass over loaded objects (module docstring). ``budget``: bytes the pass may
    allocate (None: no limit, for objects of this process)."""

    def __init__(self, budget: int | None = None):
        self.budget = budget
        self._memo, self._open = {}, set()

    def _draw(self, nbytes: int, what: str) -> None:
        if self.budget is None:
            return
        self.budget -= nbytes
        if self.budget < 0:
            raise Refused(f'{what} would exceed the bytes the file holds (its data is used '
                          'more than once)')

    def rebuild(self, obj, depth: int = 0):
        """``obj`` with recipes built, tensors and containers made plain; shared objects
        stay shared."""
        if type(obj) in _SCALARS:
            return obj
        key = id(obj)
        if key in self._memo:
            return self._memo[key]
        if key in self._open:
            raise Refused(f'a {type(obj).__name__} that contains itself (cyclic data)')
        if depth > MAX_DEPTH:
            raise Refused(f'objects nested deeper than {MAX_DEPTH} levels')
        self._open.add(key)
        try:
            result = self._rebuild(obj, depth + 1)
        finally:
            self._open.discard(key)
        self._memo[key] = result
        return result

    def _rebuild(self, obj, depth: int):
        kind = type(obj)
        if kind is _DtypeRecipe:
            return _build_dtype(obj)
        if kind in (_NdarrayRecipe, _HistoryBufferRecipe):
            if not obj.built:
                raise Refused(f'{obj.name} without its state')
            return (self._array if kind is _NdarrayRecipe else self._history_buffer)(obj, depth)
        if kind is _ScalarRecipe:
            return self._scalar(obj, depth)
        if isinstance(obj, _Recipe):
            raise Refused(f'{obj.name} outside the object it belongs to')
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj)
        if kind is dict and set(obj) == {HISTORY_BUFFER_KEY}:
            return self._plain_history_buffer(obj[HISTORY_BUFFER_KEY], depth)
        if kind in (dict, OrderedDict, Counter):
            items = [(self.rebuild(k, depth), self.rebuild(v, depth)) for k, v in obj.items()]
            result = kind(items)
            if kind is OrderedDict and '_metadata' in vars(obj):
                result._metadata = self._module_metadata(obj._metadata)
            return result
        if kind in (list, tuple, set, torch.Size):
            return kind(self.rebuild(v, depth) for v in obj)
        if isinstance(obj, _LEAVES):
            return obj
        raise Refused(f'an object of type {kind.__module__}.{kind.__qualname__} (a checkpoint '
                      'holds tensors, numbers, strings, containers, numpy arrays and '
                      'HistoryBuffers)')

    # ------------------------------------------------------------------ pieces
    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A fresh plain tensor viewing the same storage; refuses views larger than it."""
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            raise Refused(f'a tensor of type {type(t).__qualname__}')
        if t.layout != torch.strided or t.is_quantized or t.is_nested or t.is_meta:
            raise Refused(f'a {t.layout} / quantized / nested / meta tensor: only dense '
                          'tensors with data are read')
        nbytes = t.numel() * t.element_size()
        held = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
        if nbytes > held:
            raise Refused(f'a tensor of shape {tuple(t.shape)} and stride {t.stride()} views '
                          f'{nbytes} bytes of a storage that holds {held} (overlapping '
                          'strides)')
        t = t.detach()
        if t.is_conj() or t.is_neg():
            self._draw(nbytes, 'a conjugate / negative view')
            t = t.resolve_conj().resolve_neg()
        fresh = torch.empty(0, dtype=t.dtype, device=t.device)
        return fresh.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())

    def _module_metadata(self, metadata) -> OrderedDict:
        """A state dict's ``_metadata``, reduced to ``{prefix: {'version': int}}``."""
        if type(metadata) not in (dict, OrderedDict):
            raise Refused(f'state dict _metadata of type {type(metadata).__name__}: '
                          'expected a dict')
        plain = OrderedDict()
        for prefix, entry in metadata.items():
            if type(prefix) is not str or type(entry) not in (dict, OrderedDict):
                raise Refused(f'state dict _metadata entry {prefix!r}: expected a module '
                              'name and a dict')
            version = entry.get('version')
            if version is not None and type(version) is not int:
                raise Refused(f'state dict _metadata[{prefix!r}] version {version!r}: '
                              'expected an int')
            plain[prefix] = {} if version is None else {'version': version}
        return plain

    def _array(self, recipe: _NdarrayRecipe, depth: int) -> np.ndarray:
        state = recipe.state
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise Refused(f'numpy array state {type(state).__name__}: expected (1, shape, '
                          'dtype, fortran, bytes)')
        _, shape, dtype, fortran, raw = state
        if (not isinstance(shape, tuple) or not all(type(s) is int and s >= 0 for s in shape)
                or type(fortran) is not bool):
            raise Refused(f'numpy array of shape {shape!r}: expected non-negative ints')
        if not isinstance(dtype, _DtypeRecipe):
            raise Refused(f'numpy array dtype {type(dtype).__name__}: expected a numpy dtype')
        dtype = self.rebuild(dtype, depth)
        if type(raw) is not bytes:
            raise Refused(f'numpy array data {type(raw).__name__}: expected bytes (an object '
                          'array pickles a list)')
        count = math.prod(shape)
        if count * dtype.itemsize != len(raw):
            raise Refused(f'numpy array of shape {shape} and dtype {dtype} needs '
                          f'{count * dtype.itemsize} bytes, the file gives {len(raw)}')
        self._draw(len(raw), 'a numpy array')
        flat = np.frombuffer(raw, dtype=dtype, count=count)
        return flat.reshape(shape, order='F' if fortran else 'C').copy(order='K')

    def _scalar(self, recipe: _ScalarRecipe, depth: int):
        args = recipe.args
        if (not isinstance(args, tuple) or len(args) != 2 or type(args[0]) is not _DtypeRecipe
                or type(args[1]) is not bytes):
            raise Refused('numpy scalar: expected (dtype, bytes)')
        dtype = self.rebuild(args[0], depth)
        if len(args[1]) != dtype.itemsize:
            raise Refused(f'numpy scalar of dtype {dtype} needs {dtype.itemsize} bytes, the '
                          f'file gives {len(args[1])}')
        return np.frombuffer(args[1], dtype=dtype)[0]

    def _history_buffer(self, recipe: _HistoryBufferRecipe, depth: int) -> HistoryBuffer:
        state = recipe.state
        allowed = {'max_length', '_log_history', '_count_history', 'statistics_methods'}
        if type(state) is not dict or not set(state) <= allowed or 'max_length' not in state:
            keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise Refused(f'HistoryBuffer state {keys}: expected {sorted(allowed)}')
        methods = state.get('statistics_methods', {})
        if type(methods) is not dict:
            raise Refused(f'HistoryBuffer statistics_methods {type(methods).__name__}: '
                          'expected a dict')
        for name, method in methods.items():
            if not (type(method) is _StatisticName and method.statistic == name):
                raise Refused(f'HistoryBuffer statistic {name!r} -> '
                              f'{getattr(method, "statistic", method)!r}: only mmengine\'s '
                              f'own {_STATISTICS} under their own names are allowed')
        logs = [self.rebuild(state[k], depth) if k in state else np.zeros(0)
                for k in ('_log_history', '_count_history')]
        return self._new_history_buffer(*logs, state['max_length'])

    def _plain_history_buffer(self, tagged, depth: int) -> HistoryBuffer:
        if type(tagged) is not dict or set(tagged) != {'log', 'count', 'max_length'}:
            raise Refused('HistoryBuffer of a plain checkpoint: expected log, count and '
                          'max_length')
        log, count = (_plain_log(self.rebuild(tagged[k], depth)) for k in ('log', 'count'))
        return self._new_history_buffer(log, count, tagged['max_length'])

    def _new_history_buffer(self, log, count, max_length) -> HistoryBuffer:
        self._draw(getattr(log, 'nbytes', 0) + getattr(count, 'nbytes', 0),
                   'a HistoryBuffer')
        return checked_history_buffer(log, count, max_length)
