"""Crafted checkpoints against :func:`odamtrain.engine.safe_load_checkpoint`.

Every file is built here and loaded in ONE child process (a crash there is a failed test,
not a dead suite) whose address space is capped at 1 GiB above what it holds after its
imports; the child prints one JSON line per file: what was raised, the seconds the load
took, the peak resident memory so far, and a fingerprint of ``HistoryBuffer``'s class-level
statistics taken after the load.
"""
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from numpy._core import multiarray

from odamtrain.engine import CheckpointError, from_plain, safe_load_checkpoint, to_plain
from odamtrain.engine.checkpoint import allowed_globals
from odamtrain.engine.checkpoint.archive import MAX_PICKLE_OPS, scan_pickle

from .conftest import REPO


class Reduce:
    """Pickles as ``func(*args)`` (+ BUILD ``state``) without ever running it here."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def _stat(name):
    return Reduce(getattr, (HistoryBuffer, name))


def _raw_pickle_checkpoint(path, data: bytes, compression=zipfile.ZIP_STORED, records=None):
    """A torch zip checkpoint whose data.pkl is ``data`` (and ``records``: {name: bytes})."""
    torch.save({}, path)
    with zipfile.ZipFile(path) as src:
        members = {n: src.read(n) for n in src.namelist()}
    prefix = next(iter(members)).split('/')[0]
    members[f'{prefix}/data.pkl'] = data
    members.update({f'{prefix}/{k}': v for k, v in (records or {}).items()})
    with zipfile.ZipFile(path, 'w', compression) as dst:
        for name, blob in members.items():
            dst.writestr(name, blob)


def _pickle_with_history_buffer_state(state) -> bytes:
    """Protocol-2 pickle of {'hb': <HistoryBuffer NEWOBJ, BUILD state>}, as mmengine writes
    it, with any state (the pickler would call HistoryBuffer.__getstate__)."""
    body = pickle.dumps(state, protocol=2)[2:-1]  # without PROTO and STOP
    return (b'\x80\x02}X\x02\x00\x00\x00hb'
            b'cmmengine.logging.history_buffer\nHistoryBuffer\n)\x81' + body + b'bs.')


# ------------------------------------------------------------- hand-written pickles
def _global(dotted: str) -> bytes:
    module, name = dotted.rsplit('.', 1)
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def _text(s: str) -> bytes:
    return b'X' + struct.pack('<I', len(s.encode())) + s.encode()


def _in_dict(value: bytes) -> bytes:
    """A protocol-2 pickle of {'x': <value>}."""
    return b'\x80\x02}' + _text('x') + value + b's.'


def _list(*items: bytes) -> bytes:
    return b'](' + b''.join(items) + b'e'


def _calls_on_memo(func: str, first: bytes, extra: bytes, times: int) -> bytes:
    """[first, func(first, ...), func(first, ...), ...]: ``first`` memoised once and given
    to ``times`` calls (each copies it)."""
    call = _global(func) + b'h\x00' + extra + (b'\x86' if extra else b'\x85') + b'R'
    return _in_dict(_list(first + b'q\x00', *[call] * times))


def _ints(n: int) -> bytes:
    return b''.join(b'J' + struct.pack('<i', i) for i in range(n))


def _write_deflate_bomb(path, inflated: int):
    """A checkpoint whose one float tensor is ``inflated`` zero bytes, deflated (a record
    that torch.save never compresses)."""
    torch.save({'w': torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as src:
        members = {n: src.read(n) for n in src.namelist()}
    prefix = next(iter(members)).split('/')[0]
    numel = inflated // 4
    members[f'{prefix}/data.pkl'] = members[f'{prefix}/data.pkl'].replace(
        b'K\x04t', b'J' + struct.pack('<i', numel) + b't', 1).replace(
        b'K\x00K\x04\x85', b'K\x00J' + struct.pack('<i', numel) + b'\x85', 1)
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as dst:
        for name, blob in members.items():
            if name.endswith('/data/0'):
                with dst.open(name, 'w', force_zip64=True) as f:
                    for _ in range(inflated >> 20):
                        f.write(bytes(1 << 20))
            else:
                dst.writestr(name, blob)


def _tar_with_pax_header(path):
    with tarfile.open(path, 'w', format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo('data.pkl')
        info.pax_headers = {'comment': '1' * 4096}
        tar.addfile(info)


def _shared_lists(levels: int):
    """[a, a] nested ``levels`` deep: 2**levels paths to one tensor in a few KB."""
    node = [torch.zeros(1)]
    for _ in range(levels):
        node = [node, node]
    return node


def _cyclic():
    loop = []
    loop.append(loop)
    return loop


def _state_dict_with_metadata(metadata):
    state = OrderedDict(w=torch.ones(2, dtype=torch.float64))
    state._metadata = metadata
    return {'state_dict': state}


def _parameter_with_attribute():
    p = torch.nn.Parameter(torch.ones(2))
    p.payload = 'set by the file'
    return {'p': p}


CASES = {
    # numpy.ndarray((2,), dtype('O8'), raw bytes): element pointers from the file
    'object_array_direct': {'x': Reduce(set, (Reduce(np.ndarray, ((2,), np.dtype('O'),
                                                                  b'A' * 16)),))},
    'object_array_reconstructed': {'x': Reduce(multiarray._reconstruct, (np.ndarray, (0,), b'b'),
                                               (1, (2,), np.dtype('O'), False, b'A' * 16))},
    'datetime_dtype': {'x': np.dtype('M8[s]')},
    'datetime_array': {'x': np.zeros(2, 'M8[s]')},
    'structured_object_dtype': {'x': np.dtype([('a', 'O')])},
    'dtype_metadata': {'x': np.dtype('f8', metadata={'k': 1})},
    'buffer_shape_mismatch': {'x': Reduce(multiarray._reconstruct, (np.ndarray, (0,), b'b'),
                                          (1, (1000,), np.dtype('f8'), False, b'A' * 8))},
    'torch_size_of_array': {'x': Reduce(torch.Size, (Reduce(multiarray._reconstruct,
                                                            (np.ndarray, (0,), b'b'),
                                                            (1, (2,), np.dtype('O'), False,
                                                             b'A' * 16)),))},
    # a statistic called by torch's tensor-subclass rebuild during the load
    'statistic_called_in_load': {'t': Reduce(torch._tensor._rebuild_from_type_v2,
                                             (_stat('max'), torch.Tensor, (None,), {}))},
    'getattr_other_method': {'x': _stat('update')},
    'os_system': {'x': Reduce(os.system, ('touch {marker}',))},
    # memory: what torch's own weights-only list admits
    'bytearray_bomb': {'x': Reduce(bytearray, (2 ** 34,))},
    'legacy_tensor_bomb': {'x': Reduce(torch.FloatTensor, (2 ** 32,))},
    'qtensor_bomb': {'x': Reduce(torch._utils._rebuild_qtensor,
                                 (torch.zeros(1).untyped_storage(), 0, (2 ** 32,), (1,),
                                  (torch.per_tensor_affine, 1.0, 0), False, OrderedDict()))},
    'untyped_storage_bomb': {'x': Reduce(torch.UntypedStorage, (2 ** 34,))},
    'numpy_arrays_share_bytes': {'x': [Reduce(multiarray._reconstruct,
                                              (np.ndarray, (0,), b'b'),
                                              (1, (2 ** 17,), np.dtype('f8'), False, shared))
                                       for shared in [bytes(2 ** 20)] for _ in range(2000)]},
    'overlapping_view': {'x': torch.zeros(1).expand(2 ** 30)},
    'cyclic_list': {'x': _cyclic()},
    # silently accepted before: attributes and assignment set by the file
    'parameter_attributes': _parameter_with_attribute(),
    'metadata_version_text': _state_dict_with_metadata({'': {'version': 'one'}}),
    # plain-checkpoint conversion
    'bf16_history_log': {'hub': {'__mmengine_history_buffer__': dict(
        log=torch.ones(3, dtype=torch.bfloat16), count=torch.ones(3, dtype=torch.int64),
        max_length=5)}},
}
# cases whose pickle is written by hand
RAW = {
    # mmengine's __setstate__ would merge this into the class: statistics('mean') -> max
    'history_buffer_statistic_swapped': _pickle_with_history_buffer_state(
        {'max_length': 10, '_log_history': np.arange(3.0), '_count_history': np.ones(3),
         'statistics_methods': {'mean': _stat('max')}}),
    'history_buffer_tensor_log': _pickle_with_history_buffer_state(
        {'max_length': 10, '_log_history': [1.0], '_count_history': np.ones(1)}),
    'deep_nesting': b'\x80\x02' + b']' * 100000 + b'a' * 99999 + b'.',
    'truncated_pickle': b'\x80\x02}X\x01\x00\x00\x00a',
    'encode_copies_one_text': _calls_on_memo('_codecs.encode', _text('a' * 2 ** 20),
                                             _text('latin1'), 1000),
    'set_copies_one_list': _calls_on_memo('builtins.set', _list(_ints(2 ** 16)), b'', 2000),
    'too_many_operations': _in_dict(_list(b'N' * (MAX_PICKLE_OPS + 1))),
    # slices to a mark on a deep stack: linear for torch's unpickler and the scan
    'marks_over_a_deep_stack': _in_dict(_list(b'N' * 300000 + b'(t' * 340000)),
    'tensor_class_bomb': _in_dict(_global('torch.Tensor') + b'J\xff\xff\xff\x7f\x85\x81'),
    'stack_global': b'\x80\x04' + _text('os') + _text('system') + b'\x93.',
}
EXPECTED = {  # case -> (error class, words the message must hold)
    'object_array_direct': ('CheckpointSecurityError', 'numpy.ndarray(...) called directly'),
    'object_array_reconstructed': ('CheckpointSecurityError', "dtype 'O8'"),
    'datetime_dtype': ('CheckpointSecurityError', "dtype 'M8'"),
    'datetime_array': ('CheckpointSecurityError', "dtype 'M8'"),
    'structured_object_dtype': ('CheckpointSecurityError', "dtype 'V8'"),
    'dtype_metadata': ('CheckpointSecurityError', 'metadata'),
    'buffer_shape_mismatch': ('CheckpointSecurityError', 'needs 8000 bytes, the file gives 8'),
    'torch_size_of_array': ('CheckpointError', 'TypeError'),
    'statistic_called_in_load': ('CheckpointSecurityError',
                                 'global torch._tensor._rebuild_from_type_v2 is not allowed'),
    'getattr_other_method': ('CheckpointSecurityError', "'update'"),
    'os_system': ('CheckpointSecurityError', 'global posix.system is not allowed'),
    'bytearray_bomb': ('CheckpointSecurityError', 'global builtins.bytearray is not allowed'),
    'tensor_class_bomb': ('CheckpointSecurityError', 'global torch.Tensor is not allowed'),
    'legacy_tensor_bomb': ('CheckpointSecurityError', 'global torch.FloatTensor is not'),
    'qtensor_bomb': ('CheckpointSecurityError', 'global torch._utils._rebuild_qtensor is not'),
    'untyped_storage_bomb': ('CheckpointSecurityError', 'UntypedStorage is not allowed'),
    'numpy_arrays_share_bytes': ('CheckpointSecurityError', 'exceed the bytes the file holds'),
    'overlapping_view': ('CheckpointSecurityError', 'overlapping strides'),
    'cyclic_list': ('CheckpointSecurityError', 'contains itself'),
    'parameter_attributes': ('CheckpointSecurityError',
                             'torch._utils._rebuild_parameter_with_state is not allowed'),
    'metadata_version_text': ('CheckpointSecurityError', "version 'one': expected an int"),
    'bf16_history_log': ('CheckpointSecurityError', 'dtype torch.bfloat16'),
    'history_buffer_statistic_swapped': ('CheckpointSecurityError', "'mean' -> 'max'"),
    'history_buffer_tensor_log': ('CheckpointSecurityError', '1-D numeric array'),
    'deep_nesting': ('CheckpointSecurityError', 'nested deeper than 64'),
    'truncated_pickle': ('CheckpointError', 'malformed pickle'),
    'encode_copies_one_text': ('CheckpointSecurityError', 'allocates more than 256 MiB'),
    'set_copies_one_list': ('CheckpointSecurityError', 'allocates more than 256 MiB'),
    'too_many_operations': ('CheckpointSecurityError', f'more than {MAX_PICKLE_OPS} operations'),
    'stack_global': ('CheckpointSecurityError', 'pickle operation STACK_GLOBAL'),
    'deflate_bomb': ('CheckpointSecurityError', 'its records inflate to 268435'),
    'tar_archive': ('CheckpointSecurityError', 'a tar archive'),
    'raw_pickle': ('CheckpointSecurityError', 'a raw pickle'),
    'empty_file': ('CheckpointError', 'the file is empty'),
    'not_a_zip': ('CheckpointError', 'not a readable zip archive'),
    'random_bytes': ('CheckpointError', 'not a zip archive'),
}
ACCEPTED = ('shared_references', 'metadata_assign', 'conjugate_view', 'config_text',
            'marks_over_a_deep_stack')

CHILD = textwrap.dedent('''
    import json, resource, sys, time
    from mmengine.logging import HistoryBuffer
    from odamtrain.engine import safe_load_checkpoint
    HistoryBuffer()  # registers the four default statistics in the class
    size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.RLIM_INFINITY))
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path in sys.argv[1:]:
        print(json.dumps(dict(path=path, loading=True)), flush=True)
        tic = time.perf_counter()
        try:
            safe_load_checkpoint(path)
            error, message = None, None
        except Exception as e:
            error, message = type(e).__name__, str(e)
        stats = {k: v.__qualname__ for k, v in HistoryBuffer._statistics_methods.items()}
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss
        print(json.dumps(dict(path=path, error=error, message=message, stats=stats,
                              seconds=time.perf_counter() - tic, grown_mb=grown / 1024)),
              flush=True)
''')


@pytest.fixture(scope='module')
def loaded(tmp_path_factory):
    """{case: the child's JSON line} after loading every crafted checkpoint."""
    folder = tmp_path_factory.mktemp('crafted')
    marker = folder / 'pwned'
    paths = {}
    for name, obj in CASES.items():
        if name == 'os_system':
            obj = {'x': Reduce(os.system, (f'touch {marker}',))}
        paths[name] = folder / f'{name}.pth'
        torch.save(obj, paths[name])
    for name, data in RAW.items():
        paths[name] = folder / f'{name}.pth'
        _raw_pickle_checkpoint(paths[name], data)
    paths['deflate_bomb'] = folder / 'deflate_bomb.pth'
    _write_deflate_bomb(paths['deflate_bomb'], 256 << 20)
    paths['tar_archive'] = folder / 'tar_archive.pth'
    _tar_with_pax_header(paths['tar_archive'])
    paths['raw_pickle'] = folder / 'raw_pickle.pth'
    paths['raw_pickle'].write_bytes(pickle.dumps({'state_dict': {}}, protocol=2))
    paths['empty_file'] = folder / 'empty_file.pth'
    paths['empty_file'].write_bytes(b'')
    paths['not_a_zip'] = folder / 'not_a_zip.pth'
    paths['not_a_zip'].write_bytes(b'PK\x03\x04 not a zip at all')
    paths['random_bytes'] = folder / 'random_bytes.pth'
    paths['random_bytes'].write_bytes(np.random.default_rng(0).bytes(4096))
    for name, obj in (('shared_references', {'x': _shared_lists(40)}),
                      ('metadata_assign', _state_dict_with_metadata(
                          {'': {'version': 2, 'assign_to_params_buffers': True}})),
                      ('conjugate_view', {'x': torch.tensor([1 + 2j]).conj()}),
                      ('config_text', {'meta': {'config': 'import os', 'cfg': 'x = 1'},
                                       'message_hub': {'runtime_info': {'cfg': 'y = 2'}}})):
        paths[name] = folder / f'{name}.pth'
        torch.save(obj, paths[name])
    proc = subprocess.run([sys.executable, '-c', CHILD, *map(str, paths.values())], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    done = {line['path']: line for line in lines if 'loading' not in line}
    crashed = [line['path'] for line in lines if 'loading' in line and line['path'] not in done]
    assert proc.returncode == 0 and not crashed, (
        f'child exited {proc.returncode} while loading {crashed}:\n{proc.stderr[-3000:]}')
    assert not marker.exists()
    return {name: done[str(path)] for name, path in paths.items()}


@pytest.mark.parametrize('case', sorted(EXPECTED))
def test_crafted_checkpoint_is_refused_by_name(loaded, case):
    line = loaded[case]
    error, words = EXPECTED[case]
    assert line['error'] == error, line
    assert words in line['message'] and case in line['message'], line['message']  # the file
    assert line['stats'] == {k: f'HistoryBuffer.{k}' for k in ('min', 'max', 'current',
                                                                'mean')}


@pytest.mark.parametrize('case', sorted(EXPECTED) + list(ACCEPTED))
def test_no_load_hangs_or_grows(loaded, case):
    """Each file is answered within seconds, and the child's peak memory (cumulative over
    the files loaded so far) stays within a few hundred MB of its start."""
    assert loaded[case]['seconds'] < 30 and loaded[case]['grown_mb'] < 400, loaded[case]


@pytest.mark.parametrize('case', ACCEPTED)
def test_crafted_but_harmless_checkpoint_loads(loaded, case):
    assert loaded[case]['error'] is None, loaded[case]


def test_shared_references_stay_shared(tmp_path):
    """2**40 paths to one tensor in a few KB: loaded and converted with the sharing kept
    (never expanded), also by the plain conversions of saving and resuming."""
    path = tmp_path / 'shared.pth'
    torch.save({'x': _shared_lists(40)}, path)
    node = safe_load_checkpoint(str(path))['x']
    for convert in (to_plain, from_plain):
        node = convert(node)
    depth = 0
    while len(node) == 2:
        assert node[0] is node[1]
        node, depth = node[0], depth + 1
    assert depth == 40 and torch.equal(node[0], torch.zeros(1))


def test_metadata_is_reduced_to_the_version_and_tensors_are_plain(tmp_path):
    """``assign_to_params_buffers`` set by the file is dropped: ``load_state_dict`` copies
    into the module's own float32 parameter instead of taking the file's float64 tensor."""
    path = tmp_path / 'assign.pth'
    state = OrderedDict(weight=torch.full((1, 2), 3.0, dtype=torch.float64),
                        bias=torch.zeros(1, dtype=torch.float64))
    state._metadata = OrderedDict({'': {'version': 1, 'assign_to_params_buffers': True}})
    state.extra = 'an attribute'
    torch.save({'state_dict': state, 'p': torch.nn.Parameter(torch.ones(2))}, path)
    loaded = safe_load_checkpoint(str(path))
    assert loaded['state_dict']._metadata == {'': {'version': 1}}
    assert not hasattr(loaded['state_dict'], 'extra')
    assert type(loaded['p']) is torch.Tensor and not loaded['p'].requires_grad
    module = torch.nn.Linear(2, 1)
    module.load_state_dict(loaded['state_dict'])
    assert module.weight.dtype == torch.float32 and torch.equal(module.weight,
                                                                torch.full((1, 2), 3.0))
    assert module.weight.data_ptr() != loaded['state_dict']['weight'].data_ptr()


def test_conjugate_view_is_resolved(tmp_path):
    path = tmp_path / 'conj.pth'
    torch.save({'x': torch.tensor([1 + 2j, 3 - 1j]).conj()}, path)
    x = safe_load_checkpoint(str(path))['x']
    assert not x.is_conj() and torch.equal(x, torch.tensor([1 - 2j, 3 + 1j]))


def test_config_text_is_dropped(tmp_path):
    path = tmp_path / 'config.pth'
    torch.save({'meta': {'config': 'import os', 'cfg': 'x = 1', 'epoch': 1},
                'message_hub': {'runtime_info': {'cfg': 'y = 2', 'iter': 3}}}, path)
    loaded = safe_load_checkpoint(str(path))
    assert loaded == {'meta': {'epoch': 1}, 'message_hub': {'runtime_info': {'iter': 3}}}


def test_every_loaded_object_is_plain(tmp_path):
    """A walk of what a checkpoint of mmengine's shape loads into: only builtins, plain
    tensors, numeric numpy objects and HistoryBuffers, no recipe left anywhere."""
    path = tmp_path / 'mmengine.pth'
    torch.save({'meta': {'seed': np.int64(3), 'hist': np.arange(3.0), 'dt': np.dtype('f4')},
                'state_dict': OrderedDict(w=torch.nn.Parameter(torch.ones(2))),
                'message_hub': {'log_scalars': {'loss': HistoryBuffer([1.0, 2.0], [1, 1])}},
                'misc': [(1, 2.0, 3j, None, True, b'x', 'y', torch.Size([2]),
                          torch.device('cpu'), torch.float16, {4}, Counter([24, 27]))]},
               path)
    allowed = (str, bytes, int, float, complex, bool, type(None), torch.Size, torch.device,
               torch.dtype, np.ndarray, np.generic, np.dtype, HistoryBuffer)
    seen = []
    stack = [safe_load_checkpoint(str(path))]
    while stack:
        obj = stack.pop()
        seen.append(type(obj))
        if isinstance(obj, dict):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set)) and not isinstance(obj, torch.Size):
            stack += list(obj)
        elif isinstance(obj, torch.Tensor):
            assert type(obj) is torch.Tensor and not obj.requires_grad and not vars(obj)
        else:
            assert isinstance(obj, allowed), type(obj)
        if isinstance(obj, np.ndarray):
            assert obj.dtype.kind in 'biufc'
    assert HistoryBuffer in seen and np.ndarray in seen and np.float32 not in seen


@pytest.mark.parametrize('data, words', [
    (_in_dict(_global('collections.OrderedDict') + _text('a') + b'\x85R'),
     'OrderedDict called with arguments'),
    (_in_dict(_global('_codecs.encode') + _text('a') + _text('hex') + b'\x86R'),
     "_codecs.encode other than (text, 'latin1')"),
    (_in_dict(b'}' + b')R'), 'REDUCE of an object that is not a global'),
])
def test_scan_refuses_calls_torch_would_make(data, words):
    with pytest.raises(Exception, match=words.replace('(', r'\(').replace(')', r'\)')):
        scan_pickle(data, allowed_globals())


def test_scan_accepts_what_torch_save_writes(tmp_path):
    """The static scan passes the pickles of real checkpoints: a module's state dict with an
    optimizer state, numpy and HistoryBuffer (the loader then reads them)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optim.step()
    path = tmp_path / 'real.pth'
    torch.save({'state_dict': model.state_dict(), 'optimizer': optim.state_dict(),
                'meta': {'hist': np.arange(5.0), 'seed': np.int64(1)},
                'message_hub': {'log_scalars': {'l': HistoryBuffer([1.0], [1])}}}, path)
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith('/data.pkl')))
    scan_pickle(data, allowed_globals())
    loaded = safe_load_checkpoint(str(path))
    assert loaded['state_dict']._metadata == {k: {'version': v['version']} for k, v in
                                              model.state_dict()._metadata.items()}
    assert torch.equal(loaded['optimizer']['state'][0]['momentum_buffer'],
                       optim.state_dict()['state'][0]['momentum_buffer'])


def test_missing_file_is_a_checkpoint_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(CheckpointError) as e:
        safe_load_checkpoint(str(tmp_path / 'none.pth'))
    assert isinstance(e.value, FileNotFoundError) and 'none.pth' in str(e.value)
