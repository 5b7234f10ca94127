import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint, save_checkpoint

from odamtrain.engine import (
    CheckpointSecurityError,
    from_plain,
    latest_complete_checkpoint,
    safe_load_checkpoint,
    to_plain,
)
from odamtrain.engine.checkpoint import _history_buffer_method
from odamtrain.utils import atomic_write_bytes

from .conftest import REPO


def _mmengine_style_checkpoint():
    """What mmengine's Runner.save_checkpoint puts in a file: numpy and HistoryBuffer."""
    return dict(
        meta=dict(epoch=3, seed=np.int64(7), lr=np.float64(0.01), hist=np.arange(4.0)),
        state_dict={'w': torch.randn(3, 2)},
        message_hub=dict(log_scalars={'train/loss': HistoryBuffer([1.0, 0.5], [1, 1])},
                         runtime_info={'iter': 10}, resumed_keys={'train/loss': True}))


def test_plain_round_trip_loads_with_weights_only(tmp_path):
    ckpt = _mmengine_style_checkpoint()
    path = tmp_path / 'plain.pth'
    torch.save(to_plain(ckpt), path)
    loaded = torch.load(path, weights_only=True)  # no allow-list needed
    assert loaded['meta']['seed'] == 7 and isinstance(loaded['meta']['seed'], int)
    assert torch.equal(loaded['meta']['hist'], torch.arange(4.0, dtype=torch.float64))
    restored = from_plain(loaded)
    hb = restored['message_hub']['log_scalars']['train/loss']
    assert isinstance(hb, HistoryBuffer)
    assert hb.mean() == pytest.approx(0.75) and hb.max_length == 1000000
    assert torch.equal(restored['state_dict']['w'], ckpt['state_dict']['w'])


def test_foreign_mmengine_checkpoint_loads_through_allow_list(tmp_path):
    ckpt = _mmengine_style_checkpoint()
    path = tmp_path / 'foreign.pth'
    torch.save(ckpt, path)
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses numpy
        torch.load(path, weights_only=True)
    loaded = safe_load_checkpoint(str(path))
    assert loaded['meta']['seed'] == 7
    np.testing.assert_array_equal(loaded['meta']['hist'], np.arange(4.0))
    assert loaded['message_hub']['log_scalars']['train/loss'].current() == 0.5
    # mmengine's loader uses it too (odamtrain registers it for local paths)
    assert torch.equal(_load_checkpoint(str(path))['state_dict']['w'], ckpt['state_dict']['w'])


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


class _GetattrGadget:
    def __reduce__(self):
        return (getattr, (HistoryBuffer, 'update'))


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': _RunsCommand(marker)}, path)
    with pytest.raises(CheckpointSecurityError) as e:
        safe_load_checkpoint(str(path))
    assert str(path) in str(e.value) and 'system' in str(e.value)
    with pytest.raises(CheckpointSecurityError):
        _load_checkpoint(str(path))  # mmengine's entry point, as tools/test.py uses
    assert not marker.exists()


def test_getattr_is_never_general(tmp_path):
    path = tmp_path / 'gadget.pth'
    torch.save({'x': _GetattrGadget()}, path)
    with pytest.raises(CheckpointSecurityError, match='update'):
        safe_load_checkpoint(str(path))
    with pytest.raises(CheckpointSecurityError):
        _history_buffer_method(os, 'system')
    assert _history_buffer_method(HistoryBuffer, 'mean') is HistoryBuffer.mean


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / 'result.json'
    path.write_bytes(b'old')

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, 'replace', crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(b'new', str(path))
    assert path.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['result.json']  # no temp file left behind


def test_kill_during_checkpoint_write_leaves_last_complete_one(tmp_path):
    """A process killed (SIGKILL) while mmengine writes a checkpoint: the previous file is
    intact, the new one does not exist, and resuming picks the last complete checkpoint."""
    script = textwrap.dedent(f'''
        import os, time, torch
        import odamtrain
        from mmengine.runner.checkpoint import save_checkpoint
        save_checkpoint({{'state_dict': {{'w': torch.ones(3)}}}}, r'{tmp_path}/epoch_1.pth')
        open(r'{tmp_path}/last_checkpoint', 'w').write(r'{tmp_path}/epoch_1.pth')
        os.fsync = lambda fd: time.sleep(120)  # hang in the middle of the next write
        save_checkpoint({{'state_dict': {{'w': torch.zeros(10**6)}}}}, r'{tmp_path}/epoch_2.pth')
    ''')
    proc = subprocess.Popen([sys.executable, '-c', script], cwd=REPO)
    deadline = time.time() + 120
    while not any(f.endswith('.tmp') for f in os.listdir(tmp_path)):
        assert proc.poll() is None and time.time() < deadline, 'writer did not start'
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / 'epoch_2.pth').exists()
    assert latest_complete_checkpoint(str(tmp_path)) == f'{tmp_path}/epoch_1.pth'
    assert torch.equal(torch.load(tmp_path / 'epoch_1.pth', weights_only=True)['state_dict']['w'],
                       torch.ones(3))


def test_latest_complete_checkpoint_fallbacks(tmp_path):
    assert latest_complete_checkpoint(str(tmp_path)) is None
    for name in ('epoch_2.pth', 'epoch_10.pth', 'best_AP50.pth'):
        save_checkpoint({'state_dict': {}}, str(tmp_path / name))
    (tmp_path / 'last_checkpoint').write_text('')  # truncated by a crash
    assert latest_complete_checkpoint(str(tmp_path)).endswith('epoch_10.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_99.pth'))  # missing file
    assert latest_complete_checkpoint(str(tmp_path)).endswith('epoch_10.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_2.pth'))
    assert latest_complete_checkpoint(str(tmp_path)).endswith('epoch_2.pth')
