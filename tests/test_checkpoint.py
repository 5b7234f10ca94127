import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

from odamtrain.engine import (
    CheckpointError,
    CheckpointSecurityError,
    check_resumable,
    from_plain,
    resumable_checkpoint,
    safe_load_checkpoint,
    to_plain,
)
from odamtrain.utils import atomic_write_bytes, remove_stale_temp_files

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


def test_checkpoint_written_by_mmengine_runner_loads(tmp_path):
    """A checkpoint of mmengine 0.10.7's own Runner (numpy in meta, HistoryBuffers in the
    message hub) loads through the allow-list with its values."""
    from mmengine.runner import Runner

    from .helpers.toy_training import ToyModel
    runner = Runner(model=ToyModel(), work_dir=str(tmp_path),
                    train_dataloader=dict(dataset=[dict(x=torch.randn(4)) for _ in range(4)],
                                          sampler=dict(type='DefaultSampler', shuffle=False),
                                          batch_size=2, collate_fn=dict(type='default_collate')),
                    train_cfg=dict(by_epoch=True, max_epochs=1),
                    optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
                    param_scheduler=dict(type='MultiStepLR', milestones=[1]),  # a Counter
                    default_hooks=dict(logger=dict(type='LoggerHook', interval=1)),
                    default_scope='mmengine')
    runner.train()
    path = tmp_path / 'epoch_1.pth'
    raw = torch.load(path, weights_only=False)  # our own file: the reference
    assert isinstance(raw['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    loaded = safe_load_checkpoint(str(path))
    check_resumable(loaded, str(path))  # what Runner.resume reads, with its types
    ref_hb, hb = (c['message_hub']['log_scalars']['train/loss'] for c in (raw, loaded))
    np.testing.assert_array_equal(hb.data[0], ref_hb.data[0])
    assert hb.max_length == ref_hb.max_length and hb.mean() == ref_hb.mean()
    assert loaded['meta']['seed'] == raw['meta']['seed']
    assert torch.equal(loaded['state_dict']['fc.weight'], raw['state_dict']['fc.weight'])


def test_users_safe_globals_are_left_as_they_were(tmp_path):
    path = tmp_path / 'foreign.pth'
    torch.save(_mmengine_style_checkpoint(), path)
    torch.save({'x': _GetattrGadget()}, tmp_path / 'gadget.pth')
    original = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([np.ndarray, np.dtype])  # a user's own choice
    try:
        users = set(torch.serialization.get_safe_globals())
        safe_load_checkpoint(str(path))
        with pytest.raises(CheckpointSecurityError):
            safe_load_checkpoint(str(tmp_path / 'gadget.pth'))
        assert set(torch.serialization.get_safe_globals()) == users
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(original)


def test_plain_history_buffer_must_be_a_contiguous_log(tmp_path):
    log = torch.zeros(1).expand(10 ** 12)  # stride 0: 10^12 values from one number
    count = torch.zeros(1, dtype=torch.int64).expand(10 ** 12)
    plain = {'__mmengine_history_buffer__': dict(log=log, count=count, max_length=5)}
    with pytest.raises(CheckpointError, match='overlapping strides'):
        from_plain({'hub': plain})
    good = {'__mmengine_history_buffer__': dict(log=torch.ones(3, dtype=torch.float64),
                                                count=torch.ones(3, dtype=torch.int64),
                                                max_length=True)}
    with pytest.raises(CheckpointError, match='max_length'):
        from_plain(good)


def test_stale_temp_files_are_recognised(tmp_path):
    atomic_write_bytes(b'x', str(tmp_path / 'a.json'))
    stale = tmp_path / 'sub' / '.epoch_3.pth.abc_1234.tmp'
    stale.parent.mkdir()
    stale.write_bytes(b'partial')
    (tmp_path / 'notes.tmp').write_bytes(b'a user file')
    assert remove_stale_temp_files(str(tmp_path)) == [str(stale)]
    assert sorted(p.name for p in tmp_path.rglob('*') if p.is_file()) == ['a.json', 'notes.tmp']


def _resumable(iteration: int, **extra) -> dict:
    """The smallest checkpoint that mmengine's Runner.resume reads (plain, weights-only)."""
    return dict(dict(meta=dict(epoch=0, iter=iteration, seed=0), state_dict={},
                     message_hub=dict(log_scalars={}, runtime_info={}, resumed_keys={})),
                **extra)


def test_resumable_checkpoint_skips_what_does_not_load(tmp_path):
    assert resumable_checkpoint(str(tmp_path)) == (None, [])
    for name, it in (('epoch_2.pth', 2), ('epoch_10.pth', 10), ('best_AP50.pth', 11)):
        torch.save(_resumable(it), tmp_path / name)
    (tmp_path / 'last_checkpoint').write_text('')  # truncated by a crash
    assert resumable_checkpoint(str(tmp_path))[0].endswith('epoch_10.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_99.pth'))  # missing file
    path, skipped = resumable_checkpoint(str(tmp_path))
    assert path.endswith('epoch_10.pth') and skipped[0][0].endswith('epoch_99.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_2.pth'))
    assert resumable_checkpoint(str(tmp_path))[0].endswith('epoch_2.pth')
    (tmp_path / 'last_checkpoint').write_bytes(b'\xff\xfe/epoch_2.pth')  # not UTF-8
    path, skipped = resumable_checkpoint(str(tmp_path))
    assert path.endswith('epoch_10.pth') and 'not UTF-8' in skipped[0][1]
    # the newest is truncated: the next one that loads, and why the newest was skipped
    (tmp_path / 'last_checkpoint').unlink()
    data = (tmp_path / 'epoch_10.pth').read_bytes()
    (tmp_path / 'epoch_10.pth').write_bytes(data[:len(data) // 2])
    path, skipped = resumable_checkpoint(str(tmp_path))
    assert path.endswith('epoch_2.pth')
    assert skipped[0][0].endswith('epoch_10.pth') and 'cannot load' in skipped[0][1]


@pytest.mark.parametrize('broken, words', [
    (dict(message_hub=[1, 2]), "'message_hub' is not a dict"),
    (dict(meta=dict(epoch=0, iter='9')), "meta['iter'] is '9'"),
    (dict(meta=dict(epoch=0, iter=9, seed=-1)), "meta['seed'] is -1"),
    (dict(state_dict={'w': 'not a tensor'}), "'state_dict' is not a dict"),
    (dict(optimizer={'state': {}, 'param_groups': [{'params': ['a']}]}), "'optimizer'"),
    (dict(param_schedulers={'lr': 'x'}), "'param_schedulers'"),
    (dict(message_hub=dict(log_scalars={'loss': 1.0}, runtime_info={}, resumed_keys={})),
     'something other than HistoryBuffers'),
])
def test_resume_takes_the_newest_checkpoint_that_resumes(tmp_path, broken, words):
    """A newest checkpoint that loads but that ``Runner.resume`` would fail on (or read
    wrong) is skipped with the reason, naming the file; the run resumes from the one
    before."""
    work = tmp_path / 'run[1]*?'  # glob characters in the work dir's name
    work.mkdir()
    torch.save(_resumable(3), work / 'iter_3.pth')
    torch.save(_resumable(9, **broken), work / 'iter_9.pth')
    (work / 'last_checkpoint').write_text(str(work / 'iter_9.pth'))
    path, skipped = resumable_checkpoint(str(work))
    assert path == str(work / 'iter_3.pth')
    assert [p for p, _ in skipped] == [str(work / 'iter_9.pth')]
    assert words in skipped[0][1] and str(work / 'iter_9.pth') in skipped[0][1]


def test_planted_checkpoint_runs_no_code_on_resume(tmp_path):
    """A checkpoint of dicts and strings (it loads under a plain weights-only torch.load)
    planted as the newest of a work dir: its config text would be executed by mmengine's
    Runner.resume; the resumed run ignores it, uses its own config and exits 0."""
    work = tmp_path / 'work [x]'
    work.mkdir()
    marker = tmp_path / 'pwned'
    code = f"import os\nos.system('touch {marker}')\n"
    torch.save(_resumable(5, meta=dict(epoch=0, iter=5, seed=0, config=code, cfg=code)),
               work / 'iter_5.pth')
    ckpt = torch.load(work / 'iter_5.pth', weights_only=True)
    ckpt['message_hub']['runtime_info']['cfg'] = code
    torch.save(ckpt, work / 'iter_5.pth')
    proc = subprocess.run([sys.executable, 'tests/helpers/toy_training.py', str(work), '1',
                           '6'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'TRAINING 5' in proc.stdout and 'DONE 6' in proc.stdout
    assert not marker.exists()


def test_resume_refuses_when_an_earlier_run_has_no_loadable_checkpoint(tmp_path):
    (tmp_path / 'epoch_1.pth').write_bytes(b'')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_1.pth'))
    proc = subprocess.run([sys.executable, 'tests/helpers/toy_training.py', str(tmp_path), '1',
                           '2'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and 'TRAINING' not in proc.stdout
    assert 'none of its checkpoints loads' in proc.stderr
    assert 'skipped' in proc.stdout + proc.stderr and 'the file is empty' in proc.stdout + \
        proc.stderr


def _train_until_killed(work, max_keep: int, max_iters: int, delay: float):
    """Start the toy training (resuming); SIGKILL it ``delay`` s after training starts.
    Returns the iteration it resumed at (None if it finished first)."""
    proc = subprocess.Popen([sys.executable, 'tests/helpers/toy_training.py', str(work),
                             str(max_keep), str(max_iters)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith('TRAINING'):
            start = int(line.split()[1])
            break
    else:
        raise AssertionError(f'training did not start (exit {proc.wait()})')
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return start


def _iteration(path) -> int:
    return torch.load(path, weights_only=True)['meta']['iter']


@pytest.mark.slow
@pytest.mark.parametrize('max_keep', [1, 3])
def test_sigkill_at_random_moments_always_leaves_a_checkpoint(tmp_path, max_keep):
    """Kills during training that mostly falls in a checkpoint save (20 MB each
    iteration): after every kill a checkpoint loads, progress never goes back, and
    ``--resume`` continues from exactly that checkpoint to the end."""
    rng = np.random.default_rng(max_keep)
    work, max_iters, last = tmp_path / 'work', 60, 0
    for delay in rng.uniform(0.05, 0.6, size=5):
        start = _train_until_killed(work, max_keep, max_iters, float(delay))
        assert start == last  # resumed from the checkpoint found after the previous kill
        path, _ = resumable_checkpoint(str(work))
        if path is None:  # killed before the first save completed
            assert last == 0 and not (work / 'last_checkpoint').exists()
            continue
        last = _iteration(path)
        assert last >= start
        assert len(list(work.glob('iter_*.pth'))) <= max_keep + 1  # +1: killed before the
        # old one's deletion, never before the new one is complete
    proc = subprocess.run([sys.executable, 'tests/helpers/toy_training.py', str(work),
                           str(max_keep), str(max_iters)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'TRAINING {last}' in proc.stdout and f'DONE {max_iters}' in proc.stdout
    assert _iteration(work / f'iter_{max_iters}.pth') == max_iters
    assert not list(work.rglob('*.tmp'))  # killed writes' temp files removed at start
