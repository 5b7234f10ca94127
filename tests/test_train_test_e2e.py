"""End to end through tools/train.py and tools/test.py on a tiny synthetic CrowdHuman."""
import json
import math
import re
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from .conftest import REPO, run_tool

pytestmark = pytest.mark.slow

# Odam-Train + Odam-NMS (the demo's), and the plain FCOS they are built on
CONFIGS = ['configs/fcos_odam_tiny_fpn_synthetic.py',
           'configs/faster-rcnn_odam_tiny_fpn_synthetic.py']


def data_options(root, batch_size=4):
    """--cfg-options that point a *_synthetic.py config at ``root`` (no worker processes)."""
    opts = [f'train_dataloader.dataset.data_root={root}',
            f'train_dataloader.batch_size={batch_size}']
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts += [f'{loader}.num_workers=0', f'{loader}.persistent_workers=False']
    for split in ('val', 'test'):
        opts += [f'{split}_dataloader.dataset.data_root={root}',
                 f'{split}_evaluator.ann_file={root}/annotation_val.odgt']
    return opts


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize('config', CONFIGS + ['configs/fcos_tiny_fpn_synthetic.py'])
def test_train_then_test(config, synthetic_root, tmp_path):
    work = tmp_path / 'work'
    # the default's warm-up would keep the ODAM losses off in a 1-epoch run
    odam = 'odam' in config
    from_start = ['model.train_cfg.odam_loss.begin_epoch=0'] if odam else []
    out = _ok(run_tool('tools/train.py', config, '--work-dir', str(work), '--cfg-options',
                       *data_options(synthetic_root), 'train_cfg.max_epochs=1',
                       'train_cfg.val_interval=1', 'default_hooks.logger.interval=1',
                       *from_start))
    # Odam-Train's losses are logged separately
    assert ('loss_odam_con' in out and 'loss_odam_sep' in out) == odam
    ckpt = torch.load(work / 'epoch_1.pth', weights_only=True)  # plain weights_only load
    assert ckpt['meta']['epoch'] == 1 and ckpt['state_dict']
    out = _ok(run_tool('tools/test.py', config, str(work / 'epoch_1.pth'), '--work-dir',
                       str(tmp_path / 'test'), '--cfg-options', *data_options(synthetic_root)))
    for name in ('AP50', 'MR^-2', 'JI'):
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    if config == 'configs/fcos_tiny_fpn_synthetic.py':  # the same checkpoint tested with
        # Odam-NMS, chosen from the CLI (the Odam-Train one is audited below)
        out = _ok(run_tool('tools/test.py', config, str(work / 'epoch_1.pth'), '--work-dir',
                           str(tmp_path / 'test_odam'), '--cfg-options',
                           *data_options(synthetic_root),
                           'model.test_cfg.nms.type=odam_nms',
                           'model.test_cfg.nms.corr_low=0.2', 'model.test_cfg.nms.corr_high=0.8'))
        assert any(line.split()[:1] == ['JI'] for line in out.splitlines())
        # the NMS / Soft-NMS / Odam-NMS table of the paper (Table 5) for this checkpoint
        table = tmp_path / 'nms_table.json'
        _ok(run_tool('tools/compare_nms.py', config, str(work / 'epoch_1.pth'), '--work-dir',
                     str(tmp_path / 'compare'), '--out', str(table), '--sweep',
                     '--cfg-options', *data_options(synthetic_root)))
        rows = json.loads(table.read_text())
        assert [r['method'] for r in rows[:3]] == ['NMS', 'Soft-NMS', 'Odam-NMS (0.2, 0.8)']
        assert len(rows) == 3 + 25  # the T_l x T_h sweep
        keys = ('AP50', 'MR-2', 'JI', 'recall', 'crowd_recall', 'sparse_recall')
        for r in rows:
            assert set(keys) <= set(r)
        assert all(r['s_per_img'] > 0 for r in rows[:3])
        # the sweep (maps computed once) reproduces the full test loop's Odam-NMS row
        swept = next(r for r in rows[3:] if r['method'] == 'Odam-NMS (0.2, 0.8)')
        for key in keys:
            assert swept[key] == pytest.approx(rows[2][key], nan_ok=True), key
    if 'fcos_odam' in config:  # the explanation audit (tiny budgets)
        audit = tmp_path / 'audit'
        _ok(run_tool('tools/audit.py', config, str(work / 'epoch_1.pth'), '--methods', 'odam',
                     'gradcam', 'drise', 'vps', '--iou-thr', '0.1', '--max-images', '2',
                     '--sets', 'detected', 'missed', '--score-thr', '0.5',
                     '--deletion-steps', '4', '--drise-masks', '8', '--vps-regions', '4',
                     '--vps-steps', '1', '--out-dir', str(audit), '--cfg-options',
                     *data_options(synthetic_root)))
        tables = json.loads((audit / 'audit.json').read_text())['results']
        assert set(tables) == {'detected', 'missed'}
        assert tables['missed']['odam']['objects'] > 0  # one epoch misses people at 0.5
        for table in tables.values():
            assert set(table) == {'odam', 'gradcam', 'drise', 'vps'}
            for row in table.values():
                assert row['images'] == 2 and row['objects'] == table['odam']['objects']
                undefined = row.get('undefined', {})
                for key in ('pointing_game', 'energy_pointing_game', 'odi', 'deletion_auc',
                            'insertion_auc', 'highest_score', 'success'):
                    # a mean in range, or NaN only where every object is undefined (the
                    # metrics' NaN policy: e.g. an all-zero map), and counted as such
                    if math.isnan(row[key]):  # (no objects: every mean is NaN)
                        assert undefined.get(key, 0) == row['objects'], (key, row)
                    else:
                        assert 0 <= row[key] <= 1, (key, row)
                        assert undefined.get(key, 0) < row['objects'], (key, row)
                assert math.isnan(row['compactness']) or row['compactness'] >= 0
            if table['odam']['objects']:  # ODAM's maps are never all zero
                assert 0 <= table['odam']['pointing_game'] <= 1
                assert 'pointing_game' not in table['odam'].get('undefined', {})
        table = tables['detected']
        if table['odam']['objects']:
            assert cv2.imread(str(audit / 'audit_curves.png')) is not None
            assert cv2.imread(str(audit / 'audit_methods.png')).shape[0] > 4 * 100  # 4 rows
        # tools/test.py ran the config's ExplanationAuditHook after testing
        hook = json.loads((tmp_path / 'test' / 'audit_test' / 'audit.json').read_text())
        assert set(hook['results']['detected']) == {'odam', 'gradcam', 'drise', 'vps'}
    # heat-map pictures and maps of the trained model's detections
    images = sorted((Path(synthetic_root) / 'Images').glob('*val*.jpg'))[:2]
    _ok(run_tool('tools/explain.py', config, str(work / 'epoch_1.pth'), *map(str, images),
                 '--out-dir', str(tmp_path / 'explain'), '--score-thr', '0', '--topk', '3',
                 '--target', 'y1', '--cfg-options',
                 f'model.test_cfg.{"rcnn." if "rcnn" in config else ""}score_thr=0'))
    for img in images:
        stem = tmp_path / 'explain' / f'{img.stem}_odam_y1'
        picture = cv2.imread(str(stem) + '.png')
        assert picture is not None and picture.shape[1] == 4 * 320
        maps = np.load(str(stem) + '.npz')
        h, w = cv2.imread(str(img)).shape[:2]
        assert maps['heatmaps'].shape == (3, h, w) and maps['bboxes'].shape == (3, 4)
        assert (maps['heatmaps'] >= 0).all() and (maps['scores'][:-1] >= maps['scores'][1:]).all()
        # the combined picture is made of the same maps as the grid (PNG is lossless)
        from odamtrain.visualization import render_combined
        combined = cv2.imread(str(stem) + '_combined.png')
        np.testing.assert_array_equal(combined, render_combined(cv2.imread(str(img)),
                                                                maps['bboxes'],
                                                                maps['heatmaps']))


@pytest.mark.parametrize('config', ['configs/retinanet_odam_tiny_fpn_synthetic.py',
                                    'configs/atss_odam_tiny_fpn_synthetic.py'])
def test_other_families_train_with_odam_and_test_with_odam_nms(config, synthetic_root,
                                                                tmp_path):
    """The tiny RetinaNet / ATSS configs: Odam-Train's losses in training and Odam-NMS at
    test time come from the config alone (one mechanism for every head)."""
    work = tmp_path / 'work'
    out = _ok(run_tool('tools/train.py', config, '--work-dir', str(work), '--cfg-options',
                       *data_options(synthetic_root), 'train_cfg.max_epochs=1',
                       'default_hooks.logger.interval=1'))
    assert 'loss_odam_con' in out and 'loss_odam_sep' in out
    out = _ok(run_tool('tools/test.py', config, str(work / 'epoch_1.pth'), '--work-dir',
                       str(tmp_path / 'test'), '--cfg-options', *data_options(synthetic_root)))
    assert any(line.split()[:1] == ['JI'] for line in out.splitlines())


def test_resume_continues_from_last_complete_checkpoint(synthetic_root, tmp_path):
    work = tmp_path / 'work'
    opts = [*data_options(synthetic_root), 'train_cfg.val_interval=100',
            'default_hooks.checkpoint.interval=1']
    _ok(run_tool('tools/train.py', CONFIGS[0], '--work-dir', str(work), '--cfg-options', *opts,
                 'train_cfg.max_epochs=1'))
    first = torch.load(work / 'epoch_1.pth', weights_only=True)
    (work / 'last_checkpoint').write_text('')  # as if killed while writing the pointer
    out = _ok(run_tool('tools/train.py', CONFIGS[0], '--work-dir', str(work), '--resume',
                       '--cfg-options', *opts, 'train_cfg.max_epochs=2'))
    assert 'resumed epoch: 1, iter: 3' in out
    second = torch.load(work / 'epoch_2.pth', weights_only=True)
    assert second['meta']['epoch'] == 2 and second['meta']['iter'] == 6
    hub = second['message_hub']['log_scalars']['train/loss']  # log history carried over
    assert len(hub['__mmengine_history_buffer__']['log']) == 6
    assert not torch.equal(first['state_dict']['bbox_head.conv_cls.weight'],
                           second['state_dict']['bbox_head.conv_cls.weight'])


def test_bad_data_root_is_a_clear_error(tmp_path):
    proc = run_tool('tools/train.py', CONFIGS[0], '--work-dir', str(tmp_path), '--cfg-options',
                    *data_options(str(tmp_path / 'missing')))
    assert proc.returncode == 2
    assert 'error: data_root' in proc.stderr and 'does not exist' in proc.stderr
    assert 'Traceback' not in proc.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_rank_gloo_training(synthetic_root, tmp_path):
    """torchrun with 2 CPU processes: each rank trains on different images, the weights stay
    identical across ranks, and the saved checkpoint holds them."""
    work = tmp_path / 'work'
    config = tmp_path / 'recording.py'
    config.write_text(f"_base_ = '{REPO}/{CONFIGS[0]}'\n"
                      "custom_imports = dict(imports=['odamtrain', "
                      "'tests.helpers.record_batches_hook'])\n"
                      "custom_hooks = [dict(type='RecordBatchesHook')]\n")
    _ok(run_tool('-m', 'torch.distributed.run', '--nproc_per_node=2',
                 f'--master_port={_free_port()}', 'tools/train.py', str(config),
                 '--launcher', 'pytorch', '--work-dir', str(work), '--cfg-options',
                 *data_options(synthetic_root, batch_size=2), 'train_cfg.max_epochs=1',
                 'train_cfg.val_interval=1', env=dict(OMP_NUM_THREADS='1')))
    seen = [json.load(open(work / f'seen_rank{r}.json')) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 6
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 12  # the whole (12-image) train set
    w0, w1 = (torch.load(work / f'weights_rank{r}.pth', weights_only=True) for r in (0, 1))
    saved = torch.load(work / 'epoch_1.pth', weights_only=True)['state_dict']
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
        assert torch.equal(w0[key], saved[key]), key


def test_odam_train_warm_up_through_the_runner(synthetic_root, tmp_path):
    """odam_loss.begin_epoch=1 through tools/train.py (OdamRunner adds the switch hook):
    epoch 1 logs no ODAM losses, epoch 2 does."""
    work = tmp_path / 'work'
    out = _ok(run_tool('tools/train.py', 'configs/fcos_odam_tiny_fpn_synthetic.py',
                       '--work-dir', str(work), '--cfg-options', *data_options(synthetic_root),
                       'train_cfg.max_epochs=2', 'train_cfg.val_begin=3',
                       'model.train_cfg.odam_loss.begin_epoch=1',
                       'default_hooks.logger.interval=1'))
    lines = [line for line in out.splitlines() if 'Epoch(train)' in line]
    first = [line for line in lines if re.search(r'Epoch\(train\)\s+\[1\]', line)]
    second = [line for line in lines if re.search(r'Epoch\(train\)\s+\[2\]', line)]
    assert first and second, out[-2000:]
    assert not any('loss_odam_con' in line for line in first)
    assert all('loss_odam_con' in line and 'loss_odam_sep' in line for line in second)
