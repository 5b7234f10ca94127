"""What an explanation audit leaves behind: a table (log and JSON), a plot of the mean
deletion / insertion curves, and a picture of every method's maps on the same objects."""
from __future__ import annotations

import json
import os
import os.path as osp

import cv2
import numpy as np

from odamtrain.evaluation.explanation_audit import METRIC_DIRECTIONS, summarize_scores
from odamtrain.evaluation.functional import curve_auc
from odamtrain.utils import atomic_write_bytes, atomic_write_figure, atomic_write_text

from .explanation_grid import _label, overlay_heatmap

__all__ = ['format_audit_table', 'plot_deletion_insertion', 'render_method_comparison',
           'write_audit_report']

SHORT = dict(pointing_game='PG', energy_pointing_game='energyPG', compactness='compact',
             odi='ODI', deletion_auc='deletion', insertion_auc='insertion',
             highest_score='highest', success='success')
SHORT.update({k: '{}[{}]'.format(SHORT[k.rsplit('_', 1)[0]], k.rsplit('_', 1)[1])
              for k in METRIC_DIRECTIONS if k.startswith(('deletion_auc_', 'insertion_auc_'))})


def format_audit_table(table: dict) -> str:
    """One method x metric text table per object set; (+) higher is better, (-) lower.

    Args:
        table: the audit's summary (``summarize_scores``).

    Returns:
        str
    """
    blocks = []
    for name, rows in table.items():
        if not rows:
            blocks.append(f'{name}: no objects')
            continue
        names = [k for k in next(iter(rows.values())) if k in METRIC_DIRECTIONS]
        heads = [SHORT[k] + ('(-)' if METRIC_DIRECTIONS[k] == 'lower' else '(+)')
                 for k in names]
        widths = [max(12, len(h) + 2) for h in heads]
        lines = [f'{name + ":":14s}' + ''.join(f'{h:>{n}s}' for h, n in zip(heads, widths))
                 + f'{"objects":>9s}']
        for method, row in rows.items():
            lines.append(f'{method:14s}' + ''.join(f'{row[k]:{n}.4f}'
                                                   for k, n in zip(names, widths))
                         + f'{row["objects"]:9d}')
        for method, row in rows.items():  # the NaN policy: say what a mean skipped
            if row.get('undefined'):
                lines.append(f'  {method}: undefined (all-zero map or box without pixels), '
                             'not in the mean: ' + ', '.join(
                                 f'{SHORT[k]} {n}' for k, n in row['undefined'].items()))
        blocks.append('\n'.join(lines))
    return '\n'.join(blocks)


def plot_deletion_insertion(raw: dict, path: str) -> bool:
    """PNG of each method's mean deletion and insertion curves, one row per object set;
    False if there are none."""
    sets = {name: {m: s['curves'] for m, s in per_method.items() if s['curves']['deletion']}
            for name, per_method in raw['sets'].items()}
    sets = {name: curves for name, curves in sets.items() if curves}
    if not sets:
        return False
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(sets), 2, figsize=(9, 3.4 * len(sets)), squeeze=False)
    for row, (name, curves) in zip(axes, sets.items()):
        _plot_curves(row, name, curves)
    fig.tight_layout()
    atomic_write_figure(fig, path)
    plt.close(fig)
    return True


def _plot_curves(axes, name: str, curves: dict) -> None:
    for ax, mode in zip(axes, ('deletion', 'insertion')):
        for method, c in curves.items():
            mean = np.mean(np.array(c[mode], dtype=float), 0)
            x = np.linspace(0, 1, len(mean))
            ax.plot(x, mean, label=f'{method} ({curve_auc(mean.tolist()):.3f})')
        ax.set_title(f'{name}: {mode} ({METRIC_DIRECTIONS[mode + "_auc"]} is better)')
        ax.set_xlabel('fraction of the pixels changed')
        ax.set_ylabel('evidence')
        ax.legend(fontsize=8)


def render_method_comparison(raw: dict, max_objects: int = 4,
                             panel_width: int = 240) -> np.ndarray | None:
    """BGR picture: one row per method, one column per object (the first image with
    detected objects), each map over the image with its GT box. None without objects or
    image."""
    if not raw['examples']:
        return None
    path, boxes, maps = raw['examples'][0]
    img = cv2.imread(path) if path else None
    if img is None:
        return None
    rows = []
    for method, m in maps.items():
        panels = []
        for k in range(min(max_objects, len(boxes))):
            panel = overlay_heatmap(img, m[k].numpy())
            x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[k])
            cv2.rectangle(panel, (x1, y1), (x2, y2), (255, 255, 255), 2)
            scale = panel_width / panel.shape[1]
            panel = cv2.resize(panel, (panel_width, int(round(panel.shape[0] * scale))))
            _label(panel, f'{method} #{k}', (255, 255, 255))
            panels.append(panel)
        rows.append(np.concatenate(panels, 1))
    return np.concatenate(rows, 0)


def write_audit_report(raw: dict, out_dir: str, meta: dict | None = None) -> dict:
    """Write ``audit.json`` (table + settings in ``meta``), ``audit_curves.png`` and
    ``audit_methods.png`` under ``out_dir``, atomically.

    Args:
        raw: the raw scores (``collect_explanation_scores``, merged over ranks).
        out_dir: the folder.
        meta: what else goes into ``audit.json`` (settings, checkpoint, ...).

    Returns:
        dict: the table (``summarize_scores``).
    """
    table = summarize_scores(raw)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(json.dumps(dict(meta or {}, results=table), indent=1),
                      osp.join(out_dir, 'audit.json'))
    plot_deletion_insertion(raw, osp.join(out_dir, 'audit_curves.png'))
    picture = render_method_comparison(raw)
    if picture is not None:
        ok, png = cv2.imencode('.png', picture)
        if ok:
            atomic_write_bytes(png.tobytes(), osp.join(out_dir, 'audit_methods.png'))
    return table
