"""Results over training seeds: mean and spread of each metric, and paired differences
(the same seed, one variant minus another), as ``tools/repeat.py`` writes them.

Shapes: ``runs`` maps a seed to rows ``{variant: {metric: value}}`` (e.g. one row per NMS
of ``tools/compare_nms.py``, or per config). Spread: the sample standard deviation over the
seeds (n - 1; NaN for one seed). A difference is *shown* when the ``|mean|`` of the paired
differences exceeds their standard deviation (and at least two seeds back it).
"""
from __future__ import annotations

import math
import statistics

__all__ = ['mean_std', 'summarize_over_seeds', 'paired_differences', 'format_seed_table']


def mean_std(values: list[float]) -> dict:
    """{'mean', 'std' (sample; NaN below two values), 'n'} of the finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return dict(mean=statistics.fmean(finite) if finite else math.nan,
                std=statistics.stdev(finite) if len(finite) > 1 else math.nan, n=len(finite))


def summarize_over_seeds(runs: dict) -> dict:
    """{variant: {metric: mean_std over the seeds}} of ``runs`` {seed: {variant: {metric:
    value}}}; a variant or metric missing from a seed is left out of that seed's values."""
    variants = {}
    for rows in runs.values():
        for variant, metrics in rows.items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    variants.setdefault(variant, {}).setdefault(metric, []).append(value)
    return {v: {m: mean_std(vals) for m, vals in per.items()} for v, per in variants.items()}


def paired_differences(runs: dict, variant: str, reference: str) -> dict:
    """{metric: mean_std of (variant - reference) per seed, plus 'shown': ``|mean| > std`` and
    n >= 2} over the seeds that have both."""
    diffs = {}
    for rows in runs.values():
        if variant not in rows or reference not in rows:
            continue
        for metric, value in rows[variant].items():
            other = rows[reference].get(metric)
            if isinstance(value, (int, float)) and isinstance(other, (int, float)) \
                    and not isinstance(value, bool):
                diffs.setdefault(metric, []).append(value - other)
    out = {}
    for metric, values in diffs.items():
        stats = mean_std(values)
        stats['shown'] = bool(stats['n'] >= 2 and abs(stats['mean']) > stats['std'])
        out[metric] = stats
    return out


def format_seed_table(summary: dict, metrics: list, title: str = '') -> str:
    """A Markdown table: one row per variant, 'mean +- std' per metric; a paired difference
    that is shown (:func:`paired_differences`) is marked with a '*'."""
    def cell(stats):
        if stats is None or math.isnan(stats['mean']):
            return 'n/a'
        text = (f'{stats["mean"]:.3f}' if math.isnan(stats['std'])
                else f'{stats["mean"]:.3f} +- {stats["std"]:.3f}')
        return text + (' *' if stats.get('shown') else '')
    lines = ([f'**{title}**', ''] if title else []) + [
        '| variant | ' + ' | '.join(metrics) + ' | seeds |',
        '|---' * (len(metrics) + 2) + '|']
    for variant, per in summary.items():
        n = max((s['n'] for s in per.values()), default=0)
        lines.append(f'| {variant} | ' + ' | '.join(cell(per.get(m)) for m in metrics)
                     + f' | {n} |')
    return '\n'.join(lines)
