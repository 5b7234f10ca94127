"""tools/crowd_density.py: val sets at two densities, one checkpoint evaluated on each; the
report is the compare_nms tables and their paired difference (slow)."""
import json

import pytest

from .conftest import run_tool

pytestmark = pytest.mark.slow


def test_density_report_is_the_compare_nms_tables(synthetic_root, tmp_path):
    from .test_train_test_e2e import _ok, data_options
    config = 'configs/fcos_tiny_fpn_synthetic.py'
    _ok(run_tool('tools/train.py', config, '--work-dir', str(tmp_path / 'train'),
                 '--cfg-options', *data_options(synthetic_root), 'train_cfg.max_epochs=1',
                 'train_cfg.val_interval=1'))
    work, data = tmp_path / 'density', tmp_path / 'data'
    opts = ['test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']
    cmd = ['tools/crowd_density.py', config, '--checkpoints', str(tmp_path / 'train' / '*.pth'),
           '--densities', 'sparse', 'packed', '--num-val', '3', '--settings', '0.2,0.8',
           '0.4,0.7', '--data-dir', str(data),
           '--work-dir', str(work), '--test-options', *opts]
    _ok(run_tool(*cmd))
    report = json.loads((work / 'density.json').read_text())
    assert list(report['densities']) == ['sparse', 'packed']
    assert report['checkpoints'] == [str(tmp_path / 'train' / 'epoch_1.pth')]
    for density, entry in report['densities'].items():
        meta = json.loads((data / density / 'synthetic_meta.json').read_text())
        assert entry['stats'] == meta['stats']['val']
        rows = {r['method']: r for r in json.loads(
            (work / density / 'checkpoint_0' / 'compare_nms.json').read_text())}
        assert entry['per_checkpoint']['0']['NMS']['JI'] == rows['NMS']['JI']
        for name in ('Odam-NMS (0.2, 0.8)', 'Odam-NMS (0.4, 0.7)'):  # the second: swept
            diff = rows[name]['JI'] - rows['NMS']['JI']
            assert entry['difference'][name]['JI']['mean'] == pytest.approx(diff)
            assert entry['difference'][name]['JI']['n'] == 1
    assert (report['densities']['sparse']['stats']['crowd_fraction']
            < report['densities']['packed']['stats']['crowd_fraction'])
    assert (work / 'density.png').stat().st_size > 1000
    # resumable: a second call evaluates nothing again
    out = _ok(run_tool(*cmd))
    assert 'checkpoint 1/1' not in out
