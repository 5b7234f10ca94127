"""Explanation audits of several trainings (seeds) of one detector, as one table per object
set: mean +- sample std over the runs of each method x metric (the layout of the VPS paper's
Table 1, with the spread of the trainings), and optionally each method minus a reference
method, or another audit of the same trainings minus these (--pair-with, e.g. other
settings), paired per run (* where |mean| > std).

    python tools/audit_seeds.py RUN_DIR/audit.json [RUN_DIR/audit.json ...]
        [--metrics insertion_auc deletion_auc ...] [--reference odam]
        [--pair-with OTHER/audit.json ...] [--out table.md]

Each audit.json is what tools/audit.py or the ExplanationAuditHook wrote for one training;
every run should audit the same images with the same settings (checked: the settings must
be equal, apart from the checkpoint).
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from odamtrain.evaluation.explanation_audit import METRIC_DIRECTIONS  # noqa: E402
from odamtrain.evaluation.repeats import (  # noqa: E402
    format_seed_table,
    paired_differences,
    summarize_over_seeds,
)
from odamtrain.utils import atomic_write_text  # noqa: E402

# what may differ between the runs of one table
PER_RUN_KEYS = ('checkpoint', 'config', 'results')


def read_runs(paths: list) -> tuple:
    """({set: {run: {method: {metric: value}}}}, the runs' shared settings) of audit.json
    files; SystemExit naming the file whose settings differ from the first's."""
    sets, settings = {}, None
    for path in paths:
        with open(path) as f:
            audit = json.load(f)
        mine = {k: v for k, v in audit.items() if k not in PER_RUN_KEYS}
        if settings is None:
            settings = mine
        elif mine != settings:
            differ = sorted(k for k in set(mine) | set(settings)
                            if mine.get(k) != settings.get(k))
            raise SystemExit(f'{path}: audit settings {differ} differ from {paths[0]}\'s')
        for name, rows in audit['results'].items():
            sets.setdefault(name, {})[path] = {
                method: {k: v for k, v in row.items() if k in METRIC_DIRECTIONS or k == 'objects'}
                for method, row in rows.items()}
    return sets, settings


def seed_tables(sets: dict, metrics: list, reference: str | None = None) -> str:
    """Markdown: per object set, mean +- std over the runs (and the paired differences to
    ``reference``)."""
    heads = [m + (' (-)' if METRIC_DIRECTIONS[m] == 'lower' else ' (+)') for m in metrics]
    blocks = []
    for name, runs in sets.items():
        summary = summarize_over_seeds(runs)
        summary = {method: {h: per.get(m) for h, m in zip(heads, metrics)} | {
            'objects': per.get('objects')} for method, per in summary.items()}
        blocks.append(format_seed_table(summary, heads + ['objects'], title=name))
        if reference:
            diffs = {f'{method} - {reference}': {
                h: paired_differences(runs, method, reference).get(m)
                for h, m in zip(heads, metrics)}
                for method in summary if method != reference}
            blocks.append(format_seed_table(diffs, heads, title=f'{name}, paired'))
    return '\n\n'.join(blocks) + '\n'


def pair_tables(sets: dict, others: dict, metrics: list) -> str:
    """Markdown: per object set and method, the other audit minus this one, paired by the
    runs' order (the same training)."""
    heads = [m + (' (-)' if METRIC_DIRECTIONS[m] == 'lower' else ' (+)') for m in metrics]
    blocks = []
    for name, runs in sets.items():
        pairs = list(zip(runs.values(), others.get(name, {}).values()))
        methods = [m for m in next(iter(runs.values()), {})
                   if all(m in other for _, other in pairs)]
        rows = {}
        for method in methods:
            merged = {i: {'this': mine[method], 'other': other[method]}
                      for i, (mine, other) in enumerate(pairs)}
            diffs = paired_differences(merged, 'other', 'this')
            rows[f'{method}: other - this'] = {h: diffs.get(m) for h, m in zip(heads, metrics)}
        blocks.append(format_seed_table(rows, heads, title=f'{name}, --pair-with minus these'))
    return '\n\n'.join(blocks) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description='Explanation audits over trainings: mean +- std')
    p.add_argument('audits', nargs='+', help='audit.json of each training')
    p.add_argument('--metrics', nargs='+', choices=sorted(METRIC_DIRECTIONS),
                   help='columns (default: every metric of the first audit)')
    p.add_argument('--reference', help='a method: add each method minus it, paired per run')
    p.add_argument('--pair-with', nargs='+', default=[],
                   help="another audit.json of each training, in the same order: its values "
                   "minus these, per method")
    p.add_argument('--out', help='also write the Markdown here (atomically)')
    args = p.parse_args(argv)
    sets, _ = read_runs(args.audits)
    first = next(iter(next(iter(sets.values())).values()))
    metrics = args.metrics or [m for m in next(iter(first.values())) if m in METRIC_DIRECTIONS]
    text = seed_tables(sets, metrics, args.reference)
    if args.pair_with:
        if len(args.pair_with) != len(args.audits):
            raise SystemExit(f'--pair-with needs one audit per training ({len(args.audits)}), '
                             f'got {len(args.pair_with)}')
        others, _ = read_runs(args.pair_with)
        text += '\n' + pair_tables(sets, others, metrics)
    print(text)
    if args.out:
        atomic_write_text(text, args.out)


if __name__ == '__main__':
    main()
