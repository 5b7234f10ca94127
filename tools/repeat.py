"""Results that hold: train each config for several seeds, evaluate every checkpoint with
every NMS variant (tools/compare_nms.py: NMS, Soft-NMS, Odam-NMS at (T_l, T_h), and with
--sweep the T_l x T_h grid; CrowdDet: its Set-NMS), and write one table of mean +- std
over the seeds plus the paired differences of the same seed: Odam-NMS minus NMS for each
config, and each config minus the --baseline config (e.g. Odam-Train minus plain) for each
NMS.

    python tools/repeat.py CONFIG [CONFIG ...] --seeds 0 1 2 [--baseline CONFIG]
        [--work-dir work_dirs/repeat] [--sweep] [--audit] [--train-options KEY=VALUE ...]
        [--test-options KEY=VALUE ...] [--audit-options KEY=VALUE ...]

--audit also scores the ODAM maps (of the score) of each checkpoint's well-detected val
objects (tools/audit.py --methods odam: pointing game, energy PG, compactness, ODI), the
metrics of the paper's Odam-Train section, with the same aggregation.

Seeds: mmengine's ``randomness.seed`` (the data order follows it). Resumable: a finished
training (``train_done.json``) or evaluation (``compare_nms.json``) is kept, an interrupted
training resumes from its last complete checkpoint; an evaluation written without the sweep is
redone when --sweep is asked. Each seed folder records what it trains (``training.json``: the
sha256 of the resolved config with the seed and --train-options); a folder that holds another
training (the config or the options changed since) stops the run instead of being reused.
Each run's output goes to its own log (``WORK_DIR/<config>/seed_<S>/{train,compare_nms}.log``).
Writes ``WORK_DIR/repeat.json`` and ``WORK_DIR/repeat.md`` (atomically) after every finished
run.
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import DETECTION_METRICS, REPO, run_logged  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402

from odamtrain.evaluation.repeats import (  # noqa: E402
    format_seed_table,
    paired_differences,
    summarize_over_seeds,
)
from odamtrain.utils import atomic_write_text  # noqa: E402

MAP_METRICS = ['pointing_game', 'energy_pointing_game', 'compactness', 'odi']
NMS = 'NMS'
MAPS = 'ODAM maps'


def config_name(path: str) -> str:
    return osp.splitext(osp.basename(path))[0]


def training_fingerprint(config: str, seed: int, train_options: list) -> str:
    """sha256 of the training of one seed: ``config`` resolved (its ``_base_`` files
    included) with ``randomness.seed`` and the --train-options merged, as tools/train.py
    builds it."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = parser.parse_args(
        ['--cfg-options', f'randomness.seed={seed}', *train_options]).cfg_options
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.merge_from_dict(options)
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def check_training_record(work: str, config: str, seed: int, args) -> None:
    """Stop if the seed folder ``work`` holds another training than this one; record this
    one in a new folder (a folder trained before the records existed is taken as is)."""
    record = osp.join(work, 'training.json')
    fingerprint = training_fingerprint(config, seed, args.train_options)
    if osp.exists(record):
        with open(record) as f:
            held = json.load(f)
        if held.get('config_sha256') != fingerprint:
            raise SystemExit(
                f'{record}: this folder holds a training of {held.get("config")} (seed '
                f'{held.get("seed")}, --train-options {held.get("train_options")}) whose '
                f'resolved config differs from {config} seed {seed} --train-options '
                f'{args.train_options} now; pass another --work-dir or remove {work}')
    elif not osp.exists(osp.join(work, 'train_done.json')):
        atomic_write_text(json.dumps(dict(config=config, seed=seed,
                                          train_options=args.train_options,
                                          config_sha256=fingerprint)), record)


def train_and_evaluate(config: str, seed: int, args) -> dict:
    """The rows {variant: metrics} of one seed of one config (trained / evaluated unless
    already done)."""
    work = osp.join(args.work_dir, config_name(config), f'seed_{seed}')
    os.makedirs(work, exist_ok=True)
    check_training_record(work, config, seed, args)
    done = osp.join(work, 'train_done.json')
    if not osp.exists(done):
        print(f'[repeat] {config_name(config)} seed {seed}: training -> {work}', flush=True)
        seconds = run_logged(
            [sys.executable, 'tools/train.py', config, '--work-dir', work, '--resume',
             '--cfg-options', f'randomness.seed={seed}', *args.train_options],
            osp.join(work, 'train.log'), f'training {config} seed {seed}')
        with open(osp.join(work, 'last_checkpoint')) as f:
            checkpoint = f.read().strip()
        atomic_write_text(json.dumps(dict(checkpoint=checkpoint, seconds=seconds)), done)
    with open(done) as f:
        trained = json.load(f)
    table = osp.join(work, 'compare_nms.json')
    if not evaluated(table, args.sweep):
        print(f'[repeat] {config_name(config)} seed {seed}: NMS variants', flush=True)
        cmd = [sys.executable, 'tools/compare_nms.py', config, trained['checkpoint'],
               '--work-dir', osp.join(work, 'compare_nms'), '--out', table,
               '--corr-low', str(args.corr_low), '--corr-high', str(args.corr_high)]
        if args.sweep:
            cmd.append('--sweep')
        if args.test_options:
            cmd += ['--cfg-options', *args.test_options]
        run_logged(cmd, osp.join(work, 'compare_nms.log'), f'evaluating {config} seed {seed}')
    with open(table) as f:
        rows = json.load(f)
    out = {r['method']: {k: v for k, v in r.items() if k in DETECTION_METRICS + ['s_per_img']}
           for r in rows}
    out['_train_seconds'] = {'seconds': trained['seconds']}
    if args.audit:
        out[MAPS] = audit_maps(config, seed, trained['checkpoint'], work, args)
    return out


def evaluated(table: str, sweep: bool) -> bool:
    """``table`` (a compare_nms.json) exists, with the sweep's rows when ``sweep`` (a
    table written without --sweep has one Odam-NMS row; CrowdDet's has none)."""
    if not osp.exists(table):
        return False
    with open(table) as f:
        odam_rows = sum(r['method'].startswith('Odam-NMS') for r in json.load(f))
    return not sweep or odam_rows != 1


def audit_maps(config: str, seed: int, checkpoint: str, work: str, args) -> dict:
    """{metric: value} of the ODAM maps of the well-detected val objects (audited unless
    already done)."""
    out_dir = osp.join(work, 'audit_odam')
    table = osp.join(out_dir, 'audit.json')
    if not osp.exists(table):
        print(f'[repeat] {config_name(config)} seed {seed}: ODAM maps audit', flush=True)
        cmd = [sys.executable, 'tools/audit.py', config, checkpoint, '--out-dir', out_dir,
               '--methods', 'odam', '--sets', 'detected', '--iou-thr', '0.5']
        if args.audit_options:
            cmd += ['--cfg-options', *args.audit_options]
        run_logged(cmd, osp.join(work, 'audit.log'), f'auditing {config} seed {seed}')
    with open(table) as f:
        odam = json.load(f)['results']['detected']['odam']
    return {k: odam[k] for k in MAP_METRICS + ['objects'] if k in odam}


def best_swept(runs: dict) -> str | None:
    """The Odam-NMS thresholds of the sweep with the best mean JI over the seeds."""
    summary = summarize_over_seeds(runs)
    swept = {v: s['JI']['mean'] for v, s in summary.items()
             if v.startswith('Odam-NMS') and 'JI' in s}
    return max(swept, key=swept.get) if swept else None


def report(args, results: dict) -> dict:
    """The JSON and Markdown report of what has finished so far."""
    out = dict(seeds=args.seeds, configs={}, baseline=None, command=' '.join(sys.argv))
    md = [f'Seeds {args.seeds}; `{" ".join(sys.argv)}`', '']
    odam = f'Odam-NMS ({args.corr_low}, {args.corr_high})'
    for name, runs in results.items():
        rows = {s: {v: m for v, m in r.items() if not v.startswith('_')}
                for s, r in runs.items()}
        summary = summarize_over_seeds(rows)
        best = best_swept(rows) if args.sweep else None
        shown = [v for v in (NMS, 'Soft-NMS', odam, best, 'Set-NMS') if v and v in summary]
        wall = [r['_train_seconds']['seconds'] for r in runs.values()]
        entry = dict(per_seed=rows, summary=summary, best_swept=best,
                     train_seconds=wall,
                     odam_nms_minus_nms=paired_differences(rows, odam, NMS))
        if best:
            entry['best_swept_minus_nms'] = paired_differences(rows, best, NMS)
        out['configs'][name] = entry
        md += [format_seed_table({v: summary[v] for v in shown}, DETECTION_METRICS,
                                 f'{name} ({len(runs)} seed{"s" * (len(runs) != 1)}, training '
                                 f'{sum(wall) / len(wall) / 60:.1f} min each)'), '']
        paired = {f'{odam} - NMS (paired)': entry['odam_nms_minus_nms']}
        if best:
            paired[f'{best} - NMS (paired, best swept)'] = entry['best_swept_minus_nms']
        if entry['odam_nms_minus_nms']:
            md += [format_seed_table(paired, DETECTION_METRICS), '']
        if MAPS in summary:
            md += [format_seed_table({MAPS: summary[MAPS]}, MAP_METRICS,
                                     f'{name}: ODAM maps of the detected val objects'), '']
    if args.baseline and config_name(args.baseline) in results:
        base = results[config_name(args.baseline)]
        out['baseline'] = config_name(args.baseline)
        pairs = {}
        for name, runs in results.items():
            if name == out['baseline']:
                continue
            for variant in (NMS, odam, MAPS):
                both = {s: {'this': runs[s][variant], 'base': base[s][variant]}
                        for s in runs if s in base and variant in runs[s]
                        and variant in base[s]}
                if both:
                    pairs[f'{name} - {out["baseline"]}, {variant}'] = paired_differences(
                        both, 'this', 'base')
        out['baseline_pairs'] = pairs
        detection = {k: v for k, v in pairs.items() if not k.endswith(MAPS)}
        maps = {k: v for k, v in pairs.items() if k.endswith(MAPS)}
        if detection:
            md += [format_seed_table(detection, DETECTION_METRICS, 'paired over seeds'), '']
        if maps:
            md += [format_seed_table(maps, MAP_METRICS, 'paired over seeds'), '']
    md.append('A paired difference is shown (*) where |mean| > std over the seeds (n >= 2).')
    os.makedirs(args.work_dir, exist_ok=True)
    atomic_write_text(json.dumps(out, indent=1), osp.join(args.work_dir, 'repeat.json'))
    atomic_write_text('\n'.join(md) + '\n', osp.join(args.work_dir, 'repeat.md'))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('configs', nargs='+')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--baseline', help='one of the configs: the others minus it, per seed')
    p.add_argument('--work-dir', default='work_dirs/repeat')
    p.add_argument('--sweep', action='store_true', help='also the T_l x T_h sweep')
    p.add_argument('--corr-low', type=float, default=0.2)
    p.add_argument('--corr-high', type=float, default=0.8)
    p.add_argument('--train-options', nargs='+', default=[],
                   help='cfg options of the training (KEY=VALUE)')
    p.add_argument('--test-options', nargs='+', default=[],
                   help='cfg options of the evaluation (KEY=VALUE)')
    p.add_argument('--audit', action='store_true',
                   help='also the ODAM-map metrics of the detected val objects')
    p.add_argument('--audit-options', nargs='+', default=[],
                   help='cfg options of the audit (KEY=VALUE), e.g. the same test NMS')
    args = p.parse_args()
    if args.baseline and args.baseline not in args.configs:
        p.error(f'--baseline {args.baseline} is not among the configs')
    missing = [c for c in args.configs if not osp.isfile(osp.join(REPO, c))]
    if missing:
        p.error(f'no such config: {", ".join(missing)}')
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f'--seeds repeats a seed: {args.seeds}')
    results = {}
    total = len(args.configs) * len(args.seeds)
    for k, (config, seed) in enumerate((c, s) for c in args.configs for s in args.seeds):
        print(f'[repeat] {k + 1}/{total}', flush=True)
        results.setdefault(config_name(config), {})[seed] = train_and_evaluate(config, seed,
                                                                              args)
        report(args, results)
    print(open(osp.join(args.work_dir, 'repeat.md')).read())


if __name__ == '__main__':
    main()
