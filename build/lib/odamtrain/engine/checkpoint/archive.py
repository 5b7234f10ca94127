"""What a checkpoint file must be before torch's unpickler reads it: checks that bound the
time and memory of a load, made on the file alone (nothing from it is built or run).

* **Format**: torch's zip format only (``torch.save`` since 1.6). Legacy files (a raw
  pickle, a tar archive) are refused by name: torch would parse them with ``tarfile``,
  which a crafted header makes backtrack for hours.
* **Records**, as torch's own reader (``PyTorchFileReader``) sees them: a ``data.pkl``;
  declared sizes in total at most :data:`MAX_INFLATION` x the file plus
  :data:`INFLATION_SLACK` (stored records never exceed the file; a deflated record of
  zeros would otherwise inflate a 1 MB file to a 1 GiB tensor). torch's reader stops at
  the declared size, so the declared total bounds what it allocates.
* **Pickle**: every operation is walked once without building anything (a symbolic run
  of torch's weights-only unpickler, :func:`scan_pickle`): only the operations that
  unpickler supports, only the globals in ``allowed`` (torch's default list would also
  admit ``bytearray(n)``, ``torch.Tensor(n)`` and quantized rebuilds that allocate ``n``
  elements from a few bytes), at most :data:`MAX_PICKLE_OPS` operations, and the bytes
  the calls and containers allocate, with shared (memoised) objects counted each time a
  call copies them, at most :data:`MAX_UNPICKLED_BYTES`.
"""
from __future__ import annotations

import _compat_pickle
import io
import os
import pickletools
from collections.abc import Container
from dataclasses import dataclass

import torch

from .errors import Refused, Unreadable

__all__ = ['ArchiveFacts', 'check_archive', 'scan_pickle', 'MAX_INFLATION',
           'INFLATION_SLACK', 'MAX_PICKLE_OPS', 'MAX_UNPICKLED_BYTES']

MAX_INFLATION = 4
INFLATION_SLACK = 64 << 20
MAX_PICKLE_OPS = 1_000_000
MAX_UNPICKLED_BYTES = 256 << 20
_ZIP_MAGIC = b'PK\x03\x04'  # torch.serialization._is_zipfile's test
_OBJECT = 64  # bytes an object of the unpickler costs at least
_TENSOR = 512  # a tensor / parameter object without its storage


@dataclass(frozen=True)
class ArchiveFacts:
    """Sizes of a checked checkpoint: the file, all its records (declared, inflated), and
    its pickle."""
    file_bytes: int
    content_bytes: int
    pickle_bytes: int


def check_archive(path: str, allowed: Container[str]) -> ArchiveFacts:
    """Check the format, the records and the pickle of the checkpoint ``path``.

    Args:
        allowed: the dotted global names (``'collections.OrderedDict'``) the pickle may use.

    Raises:
        Refused: the file is of a format or content this loader does not read.
        Unreadable: the file is damaged (empty, truncated, not an archive).
    """
    with open(path, 'rb') as f:
        head = f.read(512)
    if head[:4] != _ZIP_MAGIC:
        _refuse_other_format(head)
    try:
        reader = torch._C.PyTorchFileReader(path)
        records = reader.get_all_records()
        sizes = {name: reader.get_record_size(name) for name in records}
    except RuntimeError as e:
        raise Unreadable(f'not a readable zip archive ({_first_line(e)})') from None
    if 'data.pkl' not in sizes:
        raise Unreadable('no data.pkl record (not a torch.save checkpoint)')
    file_bytes = os.path.getsize(path)
    content = sum(sizes.values())
    limit = MAX_INFLATION * file_bytes + INFLATION_SLACK
    if content > limit:
        raise Refused(f'its records inflate to {content} bytes, more than '
                             f'{MAX_INFLATION} x the file ({file_bytes} bytes) + '
                             f'{INFLATION_SLACK >> 20} MiB')
    data = reader.get_record('data.pkl')
    scan_pickle(data, allowed)
    return ArchiveFacts(file_bytes, content, len(data))


def _refuse_other_format(head: bytes):
    legacy = ("a tar archive (torch's legacy format before 1.6)" if head[257:262] == b'ustar'
              else "a raw pickle (torch's legacy format before 1.6)" if head[:1] == b'\x80'
              else None)
    if legacy:
        raise Refused(f'{legacy}; only the zip format of torch.save (torch >= 1.6) is read')
    raise Unreadable('not a zip archive (a torch.save checkpoint starts with PK\\x03\\x04)'
                     if head else 'the file is empty')


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ------------------------------------------------------------------ symbolic unpickling
class _Value:
    """An object on the symbolic stack: its shallow size in bytes, and what a call needs
    to know of it (the elements of a tuple, a short string, the name of a global)."""
    __slots__ = ('size', 'items', 'text', 'name')

    def __init__(self, size=_OBJECT, items=None, text=None, name=None):
        self.size, self.items, self.text, self.name = size, items, text, name


_SCALAR = _Value()
# torch's weights-only unpickler reads these operations and no others
_SUPPORTED = {'GLOBAL', 'NEWOBJ', 'REDUCE', 'BUILD', 'APPEND', 'APPENDS', 'SETITEM',
              'SETITEMS', 'MARK', 'TUPLE', 'TUPLE1', 'TUPLE2', 'TUPLE3', 'NONE', 'NEWFALSE',
              'NEWTRUE', 'EMPTY_TUPLE', 'EMPTY_LIST', 'EMPTY_DICT', 'EMPTY_SET', 'BININT',
              'BININT1', 'BININT2', 'BINFLOAT', 'BINUNICODE', 'SHORT_BINSTRING', 'BINPERSID',
              'BINGET', 'LONG_BINGET', 'BINPUT', 'LONG_BINPUT', 'LONG1', 'PROTO', 'STOP'}
# per operation: (objects under its mark, or None without a mark; objects it pops)
_POPS = {op.name: ((op.stack_before.index(pickletools.markobject)
                    if pickletools.stackslice in op.stack_before else None),
                   len(op.stack_before)) for op in pickletools.opcodes}
_TENSOR_REBUILDS = {'torch._utils._rebuild_tensor', 'torch._utils._rebuild_tensor_v2',
                    'torch._utils._rebuild_tensor_v3', 'torch._utils._rebuild_parameter',
                    'torch.nn.parameter.Parameter'}


def global_name(data: bytes, pos: int) -> str:
    """The dotted name of the GLOBAL operation at ``pos``, mapped from Python 2 names as
    torch's unpickler maps it."""
    stream = io.BytesIO(data)
    stream.seek(pos + 1)
    module = stream.readline()[:-1].decode('utf-8')
    name = stream.readline()[:-1].decode('utf-8')
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f'{module}.{name}'


def _call_size(func: _Value, args: _Value) -> int:
    """Bytes a call of an allowed global allocates beyond its arguments."""
    items = args.items or []
    if func.name == 'collections.OrderedDict':
        if items:
            raise Refused('OrderedDict called with arguments (its items come by '
                                 'SETITEMS)')
        return _OBJECT
    if func.name == '_codecs.encode':
        if len(items) != 2 or items[1].text not in ('latin1', 'latin-1'):
            raise Refused("_codecs.encode other than (text, 'latin1') (the bytes "
                                 'of a protocol-2 pickle)')
        return _OBJECT + items[0].size
    if func.name in ('builtins.set', 'collections.Counter', 'torch.Size'):
        return _OBJECT + 4 * sum(v.size for v in items)  # a shallow copy (hashed for set)
    if func.name in _TENSOR_REBUILDS:
        return _TENSOR
    return _OBJECT + sum(v.size for v in items) // 8  # numbers, devices, the stand-ins


def scan_pickle(data: bytes, allowed: Container[str]) -> None:
    """Walk a weights-only pickle without building it (module docstring).

    Raises:
        Refused: an unsupported operation, a global not in ``allowed``, a call
            torch would refuse, more than :data:`MAX_PICKLE_OPS` operations or more than
            :data:`MAX_UNPICKLED_BYTES` allocated.
        Unreadable: a malformed (truncated) pickle.
    """
    stack, marks, memo, total = [], [], {}, 0
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(data), 1):
            if count > MAX_PICKLE_OPS:
                raise Refused(f'its pickle has more than {MAX_PICKLE_OPS} operations')
            name = op.name
            if name not in _SUPPORTED:
                raise Refused(f"pickle operation {name} (not read by torch's "
                              'weights-only loader)')
            slice_below, count_popped = _POPS[name]
            if name == 'MARK':
                marks.append(len(stack))
                continue
            if slice_below is not None:  # pops to the mark, then the objects below it
                mark = marks.pop()
                popped = stack[mark:]
                del stack[mark:]
                below = [stack.pop() for _ in range(slice_below)]
            elif count_popped:
                popped = stack[-count_popped:]
                if len(popped) != count_popped:
                    raise IndexError('stack underflow')
                del stack[-count_popped:]
                below = []
            else:
                popped = below = []
            cost = _OBJECT
            if name == 'GLOBAL':
                dotted = global_name(data, pos)
                if dotted not in allowed:
                    raise Refused(f'global {dotted} is not allowed in a checkpoint')
                pushed = _Value(name=dotted)
            elif name in ('REDUCE', 'NEWOBJ'):
                func, args = popped
                if func.name is None:
                    raise Refused(f'{name} of an object that is not a global')
                pushed = _Value(_call_size(func, args))
                cost = pushed.size
            elif name in ('BINGET', 'LONG_BINGET'):
                pushed, cost = memo[arg], 8
            elif name in ('BINPUT', 'LONG_BINPUT'):
                memo[arg] = stack[-1]
                continue
            elif name in ('APPEND', 'APPENDS', 'SETITEM', 'SETITEMS'):
                pushed = (below or popped)[0]
                cost = (8 if name.startswith('APPEND') else 32) * len(popped)
                pushed.size += cost
            elif name == 'BUILD':
                pushed, cost = popped[0], 0
            elif name.startswith('TUPLE') or name == 'EMPTY_TUPLE':
                pushed = _Value(_OBJECT + 8 * len(popped), items=popped)
                cost = pushed.size
            elif isinstance(arg, (str, bytes)):
                width = 1 if isinstance(arg, bytes) or arg.isascii() else 4
                pushed = _Value(_OBJECT + width * len(arg),
                                text=arg if len(arg) <= 64 else None)
                cost = pushed.size
            elif name in ('PROTO', 'STOP'):
                continue
            elif name in ('EMPTY_LIST', 'EMPTY_DICT', 'EMPTY_SET'):
                pushed = _Value()  # grows by APPEND / SETITEM
            else:  # numbers, None, booleans, persistent ids (storages: in the records)
                pushed = _SCALAR
            total += cost
            if total > MAX_UNPICKLED_BYTES:
                raise Refused(f'its pickle allocates more than {MAX_UNPICKLED_BYTES >> 20} MiB')
            stack.append(pushed)
    except (ValueError, IndexError, KeyError, UnicodeDecodeError) as e:
        raise Unreadable(f'malformed pickle ({type(e).__name__}: {e})') from None
