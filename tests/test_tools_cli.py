"""The tools' command lines: numeric arguments checked at parse time, outputs never
overwritten by another input of the same run."""
import importlib.util
import json
import os.path as osp
import sys

import pytest

from .conftest import REPO


def _tool(name):
    sys.path.insert(0, osp.join(REPO, 'tools'))
    spec = importlib.util.spec_from_file_location(f'tool_{name}', osp.join(REPO, 'tools',
                                                                           f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('tool, argv, message', [
    ('explain', ['--topk', '0'], 'argument --topk: 0 is less than 1'),
    ('explain', ['--topk', '-1'], 'argument --topk: -1 is less than 1'),
    ('explain', ['--max-images', '-1'], 'argument --max-images: -1 is less than 0'),
    ('explain', ['--score-thr', '1.5'], 'argument --score-thr: 1.5 is not in [0, 1]'),
    ('explain', ['--topk', 'two'], "argument --topk: 'two' is not an integer"),
    ('audit', ['--drise-masks', '0'], 'argument --drise-masks: 0 is less than 1'),
    ('audit', ['--drise-masks', '-5'], 'argument --drise-masks: -5 is less than 1'),
    ('audit', ['--vps-steps', '0'], 'argument --vps-steps: 0 is less than 1'),
    ('audit', ['--vps-regions', '0'], 'argument --vps-regions: 0 is less than 2'),
    ('audit', ['--deletion-steps', '-3'], 'argument --deletion-steps: -3 is less than 0'),
    ('audit', ['--iou-thr', '-0.1'], 'argument --iou-thr: -0.1 is not in [0, 1]'),
    ('compare_nms', ['--iou', 'nan'], 'argument --iou: nan is not in [0, 1]'),
])
def test_bad_numbers_are_refused_at_parse_time(tool, argv, message, monkeypatch, capsys):
    positional = ['cfg.py', 'ckpt.pth'] + (['img.jpg'] if tool == 'explain' else [])
    out = [] if tool == 'compare_nms' else ['--out-dir', 'out']
    monkeypatch.setattr(sys, 'argv', [tool, *positional, *out, *argv])
    with pytest.raises(SystemExit) as e:
        _tool(tool).parse_args()
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_good_numbers_parse(monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['audit', 'cfg.py', 'ckpt.pth', '--out-dir', 'o',
                                      '--drise-masks', '1', '--vps-regions', '2',
                                      '--deletion-steps', '0', '--iou-thr', '1'])
    args = _tool('audit').parse_args()
    assert (args.drise_masks, args.vps_regions, args.deletion_steps, args.iou_thr) == (1, 2, 0,
                                                                                      1.0)


def test_images_of_the_same_name_get_distinct_outputs(tmp_path):
    explain = _tool('explain')
    for folder in ('a', 'b'):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / 'x.jpg').write_bytes(b'')
    (tmp_path / 'a' / 'x.png').write_bytes(b'')
    (tmp_path / 'a' / 'y.jpg').write_bytes(b'')
    files = explain.list_images([str(tmp_path / 'a'), str(tmp_path / 'b'),
                                 str(tmp_path / 'a' / 'y.jpg')])  # y.jpg listed twice
    assert [osp.relpath(f, tmp_path) for f in files] == ['a/x.jpg', 'a/x.png', 'a/y.jpg',
                                                          'b/x.jpg']
    assert explain.output_stems(files) == ['a__x_jpg', 'a__x_png', 'y', 'b__x_jpg']
    assert explain.output_stems(files[2:3]) == ['y']


def test_audit_hook_settings_with_overrides(monkeypatch):
    """--hook-settings: the config's ExplanationAuditHook values (written out by hand from
    configs/fcos_odam_tiny_fpn_synthetic.py), the named flags on top; without it the flags'
    defaults, as before."""
    from mmengine.config import Config
    audit = _tool('audit')
    cfg = Config.fromfile(osp.join(REPO, 'configs/fcos_odam_tiny_fpn_synthetic.py'))
    base, max_images = audit.config_hook_settings(cfg, 'fcos_odam')
    assert max_images == 4
    args = audit.parse_args(['c.py', 'k.pth', '--out-dir', 'o', '--hook-settings',
                             '--drise-masks', '50', '--seed', '3', '--vps-window', '2',
                             '--dhsic-designs', '64'])
    assert args.given == {'config', 'checkpoint', 'out_dir', 'hook_settings', 'drise_masks',
                          'seed', 'vps_window', 'dhsic_designs'}
    s = audit.audit_settings(args, args.given, base)
    assert s.methods == ('odam', 'gradcam', 'drise', 'vps')
    assert (s.deletion_baseline, s.extra_evidences) == ('noise', ())
    table1 = audit.parse_args(['c.py', 'k.pth', '--out-dir', 'o', '--evidence', 'vps',
                               '--extra-evidences', 'class', 'iou', '--deletion-baseline',
                               'black', '--evidence-source', 'candidates'])
    for given in (table1.given, set(vars(table1))):  # with and without --hook-settings
        t = audit.audit_settings(table1, given, {})
        assert t.drise.evidence == t.dhsic.evidence == t.vps.evidence == 'candidates'
    assert (t.evidence, t.extra_evidences, t.deletion_baseline) == ('vps', ('class', 'iou'),
                                                                    'black')
    assert s.sets == ('detected', 'missed')
    assert (s.iou_thr, s.score_thr, s.deletion_steps, s.seed) == (0.5, 0.3, 10, 3)
    assert (s.drise.num_masks, s.drise.seed) == (50, 3)
    assert (s.dhsic.num_designs, s.dhsic.grid, s.dhsic.seed) == (64, 8, 3)
    assert (s.vps.regions, s.vps.max_steps, s.vps.window) == (16, 3, 2)

    plain = audit.parse_args(['c.py', 'k.pth', '--out-dir', 'o', '--vps-window', '2'])
    s = audit.audit_settings(plain, set(vars(plain)), {})  # as main without --hook-settings
    assert s.methods == ('odam',) and s.sets == ('detected',) and s.iou_thr == 0.9
    assert (s.drise.num_masks, s.drise.estimator, s.drise.seed) == (1000, 'contrast', 0)
    assert (s.vps.regions, s.vps.window, s.vps.max_steps, s.deletion_steps) == (64, 2, None,
                                                                                0)


def test_audit_hook_settings_need_one_hook():
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs/fcos_tiny_fpn_synthetic.py'))
    with pytest.raises(SystemExit, match='fcos_tiny.*has 0 ExplanationAuditHook'):
        _tool('audit').config_hook_settings(cfg, 'fcos_tiny')


@pytest.mark.parametrize('rcnn', [False, True])
def test_compare_nms_keeps_the_configs_own_odam_nms_settings(monkeypatch, rcnn):
    """The Odam-NMS row uses the config's map settings and map_score_thr (the thresholds
    and the IoU are the arguments'); --map-mode / --map-features override them."""
    from mmengine.config import Config
    nms = dict(type='odam_nms', iou_threshold=0.6, corr_low=0.3, corr_high=0.7, mode='windows',
               map_score_thr=0.1, keep_heatmaps=True)
    test_cfg = dict(rcnn=dict(nms=nms)) if rcnn else dict(nms=nms)
    cfg = Config(dict(model=dict(test_cfg=test_cfg)))
    tool = _tool('compare_nms')
    for argv, mode in (([], 'windows'), (['--map-mode', 'exact'], 'exact')):
        monkeypatch.setattr(sys, 'argv', ['compare_nms', 'cfg.py', 'ckpt.pth', *argv])
        name, odam = tool.nms_variants(cfg, tool.parse_args())[-1]
        assert name == 'Odam-NMS (0.2, 0.8)'
        assert odam == dict(type='odam_nms', iou_threshold=0.5, mode=mode, map_score_thr=0.1,
                            corr_low=0.2, corr_high=0.8)


def test_audit_seeds_table_is_mean_and_std_over_the_runs(tmp_path):
    """Two runs' audit.json (written by hand): mean and sample std per method x metric,
    the paired difference to a reference method, and runs with other settings refused."""
    tool = _tool('audit_seeds')
    settings = dict(methods=['odam', 'drise'], sets=['detected'], evidence='vps')
    values = {'a': dict(odam=0.5, drise=0.2), 'b': dict(odam=0.7, drise=0.6)}
    paths = []
    for run, v in values.items():
        path = tmp_path / f'{run}.json'
        results = {'detected': {m: dict(insertion_auc=x, pointing_game=1.0, objects=3,
                                        images=2) for m, x in v.items()}}
        path.write_text(json.dumps(dict(settings, checkpoint=f'{run}.pth', results=results)))
        paths.append(str(path))
    sets, _ = tool.read_runs(paths)
    text = tool.seed_tables(sets, ['insertion_auc'], reference='drise')
    assert '| odam | 0.600 +- 0.141 | 3.000 +- 0.000 | 2 |' in text  # sqrt(0.02)
    assert '| drise | 0.400 +- 0.283 |' in text
    assert '| odam - drise | 0.200 +- 0.141 * | 2 |' in text
    later = []  # the same trainings audited again with other settings: +0.1 for odam
    for run, v in values.items():
        path = tmp_path / f'{run}_other.json'
        results = {'detected': {'odam': dict(insertion_auc=v['odam'] + 0.1, objects=3)}}
        path.write_text(json.dumps(dict(settings, evidence='iou', results=results)))
        later.append(str(path))
    others, _ = tool.read_runs(later)
    assert '| odam: other - this | 0.100 +- 0.000 * | 2 |' in tool.pair_tables(
        sets, others, ['insertion_auc'])
    other = tmp_path / 'c.json'
    other.write_text(json.dumps(dict(settings, evidence='odam', checkpoint='c.pth',
                                     results={})))
    with pytest.raises(SystemExit, match=r"c.json: audit settings \['evidence'\] differ"):
        tool.read_runs(paths + [str(other)])
