"""Odam-NMS's gain over NMS as a function of crowd density: synthetic val sets at several
densities (odamtrain.datasets.DENSITIES), each checkpoint (e.g. one per training seed)
evaluated on each with NMS, Soft-NMS and Odam-NMS (tools/compare_nms.py), the paired
difference Odam-NMS minus NMS (same checkpoint, same images) as mean +- std over the
checkpoints, and a plot of it against the val sets' crowd fraction.

    python tools/crowd_density.py CONFIG --checkpoints CKPT [CKPT ...]
        [--densities sparse default dense packed] [--num-val 60]
        [--settings 0.2,0.8 0.4,0.8] [--data-dir data/synthetic_density]
        [--work-dir work_dirs/density] [--out density.json] [--plot density.png]

--settings: the Odam-NMS (T_l, T_h) to report; the first is compare_nms's Odam-NMS row, the
others come from its T_l x T_h sweep (T_l in 0, 0.1, ..., 0.4; T_h in 0.6, ..., 0.9, 1.01),
which is then run too.

Resumable: a val set already generated and an evaluation already written are kept. The JSON
and the plot are written (atomically) after every finished evaluation.
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import DETECTION_METRICS, run_logged  # noqa: E402

from odamtrain.datasets import DENSITIES  # noqa: E402
from odamtrain.evaluation.repeats import paired_differences, summarize_over_seeds  # noqa: E402
from odamtrain.utils import atomic_write_figure, atomic_write_text  # noqa: E402


def make_val_set(density: str, args) -> dict:
    """The val set of ``density`` under ``args.data_dir`` (generated unless present) ->
    its crowd statistics."""
    root = osp.join(args.data_dir, density)
    os.makedirs(args.work_dir, exist_ok=True)
    run_logged([sys.executable, 'tools/make_synthetic_crowdhuman.py', '--out', root,
                '--num-train', '0', '--num-val', str(args.num_val), '--seed', str(args.seed),
                '--density', density], osp.join(args.work_dir, 'data.log'),
               f'making the {density} val set')
    with open(osp.join(root, 'synthetic_meta.json')) as f:
        return json.load(f)['stats']['val']


def evaluate(config: str, checkpoint: str, density: str, index: int, args) -> dict:
    """{variant: metrics} of ``checkpoint`` on the ``density`` val set (kept if done)."""
    root = osp.join(args.data_dir, density)
    work = osp.join(args.work_dir, density, f'checkpoint_{index}')
    table = osp.join(work, 'compare_nms.json')
    if not osp.exists(table):
        os.makedirs(work, exist_ok=True)
        print(f'[density] {density}: checkpoint {index + 1}/{len(args.checkpoints)} '
              f'({checkpoint})', flush=True)
        low, high = args.settings[0]
        sweep = ['--sweep'] if len(args.settings) > 1 else []
        run_logged([sys.executable, 'tools/compare_nms.py', config, checkpoint,
                    '--work-dir', osp.join(work, 'compare_nms'), '--out', table,
                    '--corr-low', str(low), '--corr-high', str(high), *sweep,
                    '--cfg-options', f'test_dataloader.dataset.data_root={root}/',
                    f'test_evaluator.ann_file={root}/annotation_val.odgt',
                    *args.test_options],
                   osp.join(work, 'compare_nms.log'), f'evaluating {checkpoint} on {density}')
    with open(table) as f:
        return {r['method']: {k: v for k, v in r.items() if k in DETECTION_METRICS}
                for r in json.load(f)}


def setting_name(low: float, high: float) -> str:
    """compare_nms's name of the Odam-NMS row at (T_l, T_h)."""
    return f'Odam-NMS ({low}, {high})'


def _errorbar(ax, x, stats: list, **kwargs) -> None:
    ax.errorbar(x, [s['mean'] for s in stats],
                yerr=[s['std'] if s['n'] > 1 else 0 for s in stats], marker='o', capsize=4,
                **kwargs)


def plot(report: dict, path: str) -> None:
    """Odam-NMS - NMS (JI, crowd recall; mean +- std over checkpoints) of each setting
    against the crowd fraction of each val set, and the methods' JI."""
    dens = [d for d in report['densities'] if report['densities'][d].get('difference')]
    if not dens:
        return
    x = [report['densities'][d]['stats']['crowd_fraction'] for d in dens]
    names = list(report['densities'][dens[0]]['difference'])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, metric, title in ((axes[0], 'JI', 'JI'), (axes[1], 'crowd_recall', 'crowd recall')):
        for name in names:
            _errorbar(ax, x, [report['densities'][d]['difference'][name][metric]
                              for d in dens], label=name)
        ax.axhline(0, color='grey', lw=0.8)
        ax.set_title(f'{title}: Odam-NMS - NMS (same images)', fontsize=9)
    for variant in ['NMS', *names]:
        _errorbar(axes[2], x, [report['densities'][d]['summary'][variant]['JI']
                               for d in dens], label=variant)
    axes[2].set_title('JI', fontsize=9)
    for ax in axes:
        ax.set_xlabel('crowd fraction of the val set')
        ax.legend(fontsize=7)
        for d, xi in zip(dens, x):
            ax.annotate(d, (xi, ax.get_ylim()[0]), fontsize=7, ha='center', va='bottom')
    n = max(s['n'] for d in dens for s in report['densities'][d]['difference'][names[0]]
            .values())
    fig.suptitle(f'{report["config"]}: {n} checkpoints, mean +- std', fontsize=9)
    fig.tight_layout()
    atomic_write_figure(fig, path)
    plt.close(fig)


def threshold_pair(text: str) -> tuple:
    """'T_l,T_h' -> (T_l, T_h), each in [0, 1.01]."""
    try:
        low, high = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not T_l,T_h (e.g. 0.2,0.8)') from None
    if not (0 <= low <= 1.01 and 0 <= high <= 1.01):
        raise argparse.ArgumentTypeError(f'{text!r}: thresholds must be in [0, 1.01]')
    return low, high


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--checkpoints', nargs='+', required=True,
                   help='one per training seed (shell globs are expanded)')
    p.add_argument('--densities', nargs='+', choices=list(DENSITIES),
                   default=['sparse', 'default', 'dense', 'packed'])
    p.add_argument('--num-val', type=int, default=60, help='val images per density')
    p.add_argument('--seed', type=int, default=0, help='seed of the val scenes')
    p.add_argument('--settings', nargs='+', type=threshold_pair, default=[(0.2, 0.8)],
                   help='Odam-NMS settings T_l,T_h to report (the first: the paper\'s)')
    p.add_argument('--data-dir', default='data/synthetic_density')
    p.add_argument('--work-dir', default='work_dirs/density')
    p.add_argument('--out', help='JSON (default: WORK_DIR/density.json)')
    p.add_argument('--plot', help='PNG (default: WORK_DIR/density.png)')
    p.add_argument('--test-options', nargs='+', default=[],
                   help='cfg options of the evaluation (KEY=VALUE)')
    args = p.parse_args()
    args.checkpoints = [c for pattern in args.checkpoints for c in sorted(glob.glob(pattern))
                        or [pattern]]
    missing = [c for c in [args.config, *args.checkpoints] if not osp.isfile(c)]
    if missing:
        p.error(f'no such file: {", ".join(missing)}')
    if args.num_val < 1:
        p.error('--num-val must be >= 1')
    out = args.out or osp.join(args.work_dir, 'density.json')
    picture = args.plot or osp.join(args.work_dir, 'density.png')
    names = [setting_name(*s) for s in args.settings]
    report = dict(config=args.config, checkpoints=args.checkpoints, num_val=args.num_val,
                  seed=args.seed, command=' '.join(sys.argv), densities={})
    for density in args.densities:
        entry = report['densities'][density] = dict(stats=make_val_set(density, args))
        runs = {}
        for i, checkpoint in enumerate(args.checkpoints):
            runs[i] = evaluate(args.config, checkpoint, density, i, args)
            missing = [n for n in names if n not in runs[i]]
            if missing:
                raise SystemExit(f'{checkpoint} on {density}: no {", ".join(missing)} row '
                                 f'(a setting off the sweep\'s grid?)')
            entry.update(per_checkpoint=runs, summary=summarize_over_seeds(runs),
                         difference={n: paired_differences(runs, n, 'NMS') for n in names})
            atomic_write_text(json.dumps(report, indent=1), out)
            plot(report, picture)
    print(f'{"density":10s}{"crowd":>7s}{"setting":>22s}{"JI NMS":>8s}{"JI Odam":>9s}'
          f'{"dJI":>17s}{"d crowd recall":>17s}')
    for density, entry in report['densities'].items():
        s = entry['summary']
        for name in names:
            d = entry['difference'][name]
            print(f'{density:10s}{entry["stats"]["crowd_fraction"]:7.3f}{name:>22s}'
                  f'{s["NMS"]["JI"]["mean"]:8.3f}{s[name]["JI"]["mean"]:9.3f}'
                  f'{d["JI"]["mean"]:+9.4f}+-{d["JI"]["std"]:.4f}'
                  f'{d["crowd_recall"]["mean"]:+9.4f}+-{d["crowd_recall"]["std"]:.4f}')
    print(f'-> {out}, {picture}')


if __name__ == '__main__':
    main()
