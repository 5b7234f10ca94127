"""Aggregation over seeds (tools/repeat.py's tables) on hand-computed cases, and the tool
itself on two seeds of the tiny FCOS for one epoch (slow)."""
import json
import math

import pytest
import torch

from odamtrain.evaluation.repeats import (
    format_seed_table,
    mean_std,
    paired_differences,
    summarize_over_seeds,
)

from .conftest import run_tool
from .test_tools_cli import _tool

RUNS = {  # seed -> variant -> metric
    0: {'NMS': {'JI': 0.50, 'AP50': 0.70}, 'Odam': {'JI': 0.52, 'AP50': 0.69}},
    1: {'NMS': {'JI': 0.46, 'AP50': 0.72}, 'Odam': {'JI': 0.49, 'AP50': 0.73}},
    2: {'NMS': {'JI': 0.54, 'AP50': 0.68}, 'Odam': {'JI': 0.55, 'AP50': 0.66}},
}


def test_mean_and_sample_std_hand_computed():
    s = mean_std([0.50, 0.46, 0.54])
    assert s['mean'] == pytest.approx(0.50) and s['n'] == 3
    assert s['std'] == pytest.approx(0.04)  # sqrt((0 + .0016 + .0016) / 2)
    one = mean_std([0.3])
    assert one['mean'] == 0.3 and math.isnan(one['std'])
    assert mean_std([math.nan, 1.0, None])['n'] == 1
    assert math.isnan(mean_std([])['mean'])


def test_summary_and_paired_differences_hand_computed():
    summary = summarize_over_seeds(RUNS)
    assert summary['Odam']['JI']['mean'] == pytest.approx((0.52 + 0.49 + 0.55) / 3)
    assert summary['NMS']['AP50']['std'] == pytest.approx(0.02)
    diff = paired_differences(RUNS, 'Odam', 'NMS')
    # JI: +.02, +.03, +.01 -> mean .02, std .01: shown; AP50: -.01, +.01, -.02 -> not shown
    assert diff['JI']['mean'] == pytest.approx(0.02) and diff['JI']['std'] == pytest.approx(0.01)
    assert diff['JI']['shown'] is True
    assert diff['AP50']['mean'] == pytest.approx(-0.02 / 3)
    assert diff['AP50']['std'] == pytest.approx(0.015275, abs=1e-6)
    assert diff['AP50']['shown'] is False
    # one seed never shows a difference; a seed without the variant is left out
    assert paired_differences({0: RUNS[0]}, 'Odam', 'NMS')['JI']['shown'] is False
    partial = {**RUNS, 3: {'NMS': {'JI': 0.9}}}
    assert paired_differences(partial, 'Odam', 'NMS')['JI']['n'] == 3
    table = format_seed_table(summary, ['JI', 'AP50'])
    assert '| Odam | 0.520 +- 0.030 | 0.693 +- 0.035 | 3 |' in table
    paired = format_seed_table({'Odam - NMS': diff}, ['JI', 'AP50'])
    assert '| Odam - NMS | 0.020 +- 0.010 * | -0.007 +- 0.015 | 3 |' in paired


@pytest.mark.slow
def test_repeat_tool_two_seeds_resumable(synthetic_root, tmp_path):
    from .test_train_test_e2e import _ok, data_options
    work = tmp_path / 'repeat'
    opts = data_options(synthetic_root)
    cmd = ['tools/repeat.py', 'configs/fcos_tiny_fpn_synthetic.py', '--seeds', '3', '4',
           '--work-dir', str(work), '--train-options', *opts, 'train_cfg.max_epochs=1',
           'train_cfg.val_interval=1', '--test-options', *opts, '--audit',
           '--audit-options', *opts]
    out = _ok(run_tool(*cmd))
    started = [line for line in out.splitlines() if line.startswith('[repeat]')]
    assert sum('training ->' in line for line in started) == 2
    report = json.loads((work / 'repeat.json').read_text())
    entry = report['configs']['fcos_tiny_fpn_synthetic']
    per_seed = {}
    for seed in (3, 4):
        rows = json.loads((work / 'fcos_tiny_fpn_synthetic' / f'seed_{seed}' /
                           'compare_nms.json').read_text())
        per_seed[seed] = {r['method']: r for r in rows}
        assert entry['per_seed'][str(seed)]['NMS']['JI'] == per_seed[seed]['NMS']['JI']
    ji = [per_seed[s]['NMS']['JI'] for s in (3, 4)]
    assert entry['summary']['NMS']['JI']['mean'] == pytest.approx(sum(ji) / 2)
    assert entry['summary']['NMS']['JI']['std'] == pytest.approx(abs(ji[0] - ji[1]) / 2 ** 0.5)
    odam = [per_seed[s]['Odam-NMS (0.2, 0.8)']['JI'] - per_seed[s]['NMS']['JI'] for s in (3, 4)]
    assert entry['odam_nms_minus_nms']['JI']['mean'] == pytest.approx(sum(odam) / 2)
    # the seeds give different weights
    ckpts = [torch.load(json.loads((work / 'fcos_tiny_fpn_synthetic' / f'seed_{s}' /
                                    'train_done.json').read_text())['checkpoint'],
                        weights_only=True)['state_dict'] for s in (3, 4)]
    key = next(iter(ckpts[0]))
    assert not torch.equal(ckpts[0][key], ckpts[1][key])
    # the ODAM-map metrics are each seed's audit.json, aggregated the same way
    odi = [json.loads((work / 'fcos_tiny_fpn_synthetic' / f'seed_{s}' / 'audit_odam' /
                      'audit.json').read_text())['results']['detected']['odam']['odi']
          for s in (3, 4)]
    assert entry['per_seed']['3']['ODAM maps']['odi'] == pytest.approx(odi[0], nan_ok=True)
    finite = [v for v in odi if math.isfinite(v)]  # NaN: no well-detected object (1 epoch)
    expected = sum(finite) / len(finite) if finite else math.nan
    assert entry['summary']['ODAM maps']['odi']['mean'] == pytest.approx(expected, nan_ok=True)
    assert '| NMS |' in (work / 'repeat.md').read_text()
    assert '| ODAM maps |' in (work / 'repeat.md').read_text()
    # each seed folder records its training, which the second call finds the same
    fingerprint = _tool('repeat').training_fingerprint
    for seed in (3, 4):
        record = json.loads((work / 'fcos_tiny_fpn_synthetic' / f'seed_{seed}' /
                             'training.json').read_text())
        assert record['config_sha256'] == fingerprint(
            'configs/fcos_tiny_fpn_synthetic.py', seed,
            [*opts, 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1'])
    # resumable: a second call trains and evaluates nothing again
    out = _ok(run_tool(*cmd))
    assert 'training ->' not in out and 'NMS variants' not in out and 'maps audit' not in out


def test_a_seed_folder_of_another_training_stops_the_run(tmp_path):
    """The record of a seed folder is the sha256 of the resolved config: the same for the same
    config, seed and options (an option equal to the config's value included), another for
    another seed, option or setting of a child config; repeat.py stops on a folder recorded
    for another training, naming it, before it trains anything."""
    fingerprint = _tool('repeat').training_fingerprint
    default, detached = (f'configs/fcos_odam{v}_tiny_fpn_synthetic.py' for v in ('', '-1st-order'))
    same = fingerprint(default, 0, [])
    assert fingerprint(default, 0, []) == same
    assert fingerprint(default, 0, ['train_cfg.max_epochs=12']) == same  # the schedule's value
    assert fingerprint(default, 1, []) != same
    assert fingerprint(default, 0, ['train_cfg.max_epochs=1']) != same
    assert fingerprint(detached, 0, []) != same  # differs by second_order only
    seed = tmp_path / 'fcos_odam_tiny_fpn_synthetic' / 'seed_0'
    seed.mkdir(parents=True)
    record = seed / 'training.json'
    record.write_text(json.dumps(dict(config=detached, seed=0, train_options=[],
                                      config_sha256=fingerprint(detached, 0, []))))
    proc = run_tool('tools/repeat.py', default, '--seeds', '0', '--work-dir', str(tmp_path))
    assert proc.returncode != 0
    assert f'{record}: this folder holds a training of {detached}' in proc.stderr
    assert sorted(p.name for p in seed.iterdir()) == ['training.json']  # nothing trained


def test_an_evaluation_without_the_sweep_is_redone_for_the_sweep(tmp_path):
    """compare_nms.json counts as done for --sweep only with the sweep's rows (CrowdDet's
    Set-NMS table has no Odam-NMS row and is done either way)."""
    evaluated = _tool('repeat').evaluated
    table = tmp_path / 'compare_nms.json'
    assert not evaluated(str(table), False) and not evaluated(str(table), True)
    plain = [{'method': 'NMS'}, {'method': 'Soft-NMS'}, {'method': 'Odam-NMS (0.2, 0.8)'}]
    cases = [(plain, True, False),
             (plain + [{'method': 'Odam-NMS (0.0, 0.6)'}], True, True),
             ([{'method': 'Set-NMS'}], True, True)]
    for rows, without_sweep, with_sweep in cases:
        table.write_text(json.dumps(rows))
        assert evaluated(str(table), False) is without_sweep
        assert evaluated(str(table), True) is with_sweep
