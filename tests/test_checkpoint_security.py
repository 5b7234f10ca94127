"""Crafted checkpoints against :func:`odamtrain.engine.safe_load_checkpoint`.

Every file is loaded in ONE child process (a crash there is a failed test, not a dead suite);
the child prints one JSON line per file: what was raised, and a fingerprint of
``HistoryBuffer``'s class-level statistics taken after the load.
"""
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from numpy._core import multiarray

from .conftest import REPO


class Reduce:
    """Pickles as ``func(*args)`` (+ BUILD ``state``) without ever running it here."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def _stat(name):
    return Reduce(getattr, (HistoryBuffer, name))


def _raw_pickle_checkpoint(path, data: bytes):
    """A torch zip checkpoint whose data.pkl is ``data``."""
    torch.save({}, path)
    with zipfile.ZipFile(path) as src:
        members = {n: src.read(n) for n in src.namelist()}
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as dst:
        for name, blob in members.items():
            dst.writestr(name, data if name.endswith('/data.pkl') else blob)


def _pickle_with_history_buffer_state(state) -> bytes:
    """Protocol-2 pickle of {'hb': <HistoryBuffer NEWOBJ, BUILD state>}, as mmengine writes
    it, with any state (the pickler would call HistoryBuffer.__getstate__)."""
    body = pickle.dumps(state, protocol=2)[2:-1]  # without PROTO and STOP
    return (b'\x80\x02}X\x02\x00\x00\x00hb'
            b'cmmengine.logging.history_buffer\nHistoryBuffer\n)\x81' + body + b'bs.')


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
    'statistic_called_in_load': ('CheckpointSecurityError', 'HistoryBuffer.max called'),
    'getattr_other_method': ('CheckpointSecurityError', "'update'"),
    'os_system': ('CheckpointSecurityError', 'system'),
    'history_buffer_statistic_swapped': ('CheckpointSecurityError', "'mean' -> 'max'"),
    'history_buffer_tensor_log': ('CheckpointSecurityError', '1-D numeric array'),
    'deep_nesting': ('CheckpointError', 'nested too deeply'),
    'truncated_pickle': ('CheckpointError', 'cannot load checkpoint'),
    'empty_file': ('CheckpointError', 'the file is empty'),
    'not_a_zip': ('CheckpointError', 'cannot load checkpoint'),
}

CHILD = textwrap.dedent('''
    import json, sys
    from mmengine.logging import HistoryBuffer
    from odamtrain.engine import safe_load_checkpoint
    HistoryBuffer()  # registers the four default statistics in the class
    for path in sys.argv[1:]:
        print(json.dumps(dict(path=path, loading=True)), flush=True)
        try:
            safe_load_checkpoint(path)
            error, message = None, None
        except Exception as e:
            error, message = type(e).__name__, str(e)
        stats = {k: v.__qualname__ for k, v in HistoryBuffer._statistics_methods.items()}
        print(json.dumps(dict(path=path, error=error, message=message, stats=stats)),
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
    paths['empty_file'] = folder / 'empty_file.pth'
    paths['empty_file'].write_bytes(b'')
    paths['not_a_zip'] = folder / 'not_a_zip.pth'
    paths['not_a_zip'].write_bytes(b'PK\x03\x04 not a zip at all')
    proc = subprocess.run([sys.executable, '-c', CHILD, *map(str, paths.values())], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
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
