"""Audit a detector's explanations on a dataset: how well each method's heat maps localise
the objects they explain and how faithful they are (the ODAM paper's Tables 1, 3a, 4).

Objects: detections matched one-to-one to GT boxes with IoU > ``iou_thr`` (0.9: "well
detected"); each detection's map is scored against its GT box and the image's other GT
boxes (:mod:`odamtrain.evaluation.functional.localisation`) and, optionally, by deleting /
inserting its pixels in heat order (:mod:`~odamtrain.evaluation.functional.faithfulness`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from odamtrain.apis import explain_batch, pixel_to_input, predict_fn
from odamtrain.explain.drise import drise_target_maps
from odamtrain.explain.vps import vps_target_maps

from .functional import (
    compactness,
    deletion_insertion,
    energy_pointing_game,
    match_detections,
    object_discrimination_index,
    pointing_game,
)

__all__ = ['LOCALISATION_METRICS', 'METRIC_DIRECTIONS', 'localisation_scores',
           'collect_explanation_scores', 'merge_scores', 'summarize_scores',
           'audit_explanations']

# name -> (function of (heatmap, box, other_boxes), better direction)
LOCALISATION_METRICS = {
    'pointing_game': (lambda h, b, o: pointing_game(h, b), 'higher'),
    'energy_pointing_game': (lambda h, b, o: energy_pointing_game(h, b), 'higher'),
    'compactness': (lambda h, b, o: compactness(h, b), 'lower'),
    'odi': (object_discrimination_index, 'lower'),
}

# every metric of the audit -> which way is better
METRIC_DIRECTIONS = {**{name: d for name, (_, d) in LOCALISATION_METRICS.items()},
                     'deletion_auc': 'lower', 'insertion_auc': 'higher'}


def localisation_scores(heatmaps: torch.Tensor, gt_boxes: torch.Tensor,
                        gt_index: torch.Tensor) -> dict:
    """Per map every :data:`LOCALISATION_METRICS` score.

    Args:
        heatmaps: (K, H, W) >= 0 on the image; gt_boxes: (M, 4) x1y1x2y2 image pixels;
        gt_index: (K,) the GT box each map explains (the others are "other objects").
    Returns:
        {metric: list of K floats (NaN where undefined)}.
    """
    out = {name: [] for name in LOCALISATION_METRICS}
    for k, g in enumerate(gt_index.tolist()):
        others = torch.cat([gt_boxes[:g], gt_boxes[g + 1:]])
        for name, (fn, _) in LOCALISATION_METRICS.items():
            out[name].append(fn(heatmaps[k], gt_boxes[g], others))
    return out


def collect_explanation_scores(model, dataloader, methods=('odam',), target: str = 'score',
                               iou_thr: float = 0.9, max_images: int = 0,
                               deletion_steps: int = 0, evidence: str = 'odam',
                               drise: dict | None = None, vps: dict | None = None,
                               seed: int = 0, progress=None) -> dict:
    """Explanation metrics of each method on the well-detected objects of the dataloader's
    images (test pipeline with GT: ``gt_instances`` in original pixels), batch size 1.

    Args:
        methods: :data:`odamtrain.apis.METHODS` entries; every method explains the same
            detections (mmdet's, or the Odam-NMS ones when the config uses it); the
            black-box ones (D-RISE, VPS) only the matched ones.
        deletion_steps: > 0 adds deletion / insertion AUCs (:func:`deletion_insertion`,
            ``steps`` forwards per curve and object, batched) with ``evidence``; deleted
            pixels become uniform noise (seeded), insertion starts from black.
        drise / vps: settings of those explainers (:func:`drise_target_maps`,
            :func:`vps_target_maps`).
    Returns:
        raw scores: {'images': n, 'methods': {method: {metric: [per object], 'curves':
        {'deletion': [[...]], 'insertion': [[...]]}}}, 'examples': [(img_path, boxes (K, 4),
        {method: maps (K, H, W)})] for the first image with objects (pictures)}.
        Summarise with :func:`summarize_scores`; raw scores of several ranks merge with
        :func:`merge_scores`.
    """
    metrics = list(LOCALISATION_METRICS) + (
        ['deletion_auc', 'insertion_auc'] if deletion_steps else [])
    scores = {m: {name: [] for name in metrics} for m in methods}
    for m in methods:
        scores[m]['curves'] = {'deletion': [], 'insertion': []}
    examples = []
    images = 0
    g = torch.Generator().manual_seed(seed)
    for data in dataloader:
        batch = model.data_preprocessor(data, False)
        inputs, samples = batch['inputs'], batch['data_samples']
        if len(samples) != 1:
            raise ValueError('audit_explanations needs a dataloader with batch_size=1')
        meta = samples[0].metainfo
        gt = samples[0].gt_instances.bboxes
        gt = (gt.tensor if hasattr(gt, 'tensor') else gt).to(inputs)
        with torch.no_grad():
            det = model.predict(inputs, [s.clone() for s in samples])[0].pred_instances
        di, gi = match_detections(det.bboxes, det.scores, gt, iou_thr)
        noise = pixel_to_input(model, torch.rand(3, *inputs.shape[-2:], generator=g) * 255)
        black = pixel_to_input(model, inputs.new_zeros(3, *inputs.shape[-2:]))
        for method in methods:
            if method == 'drise':
                maps = drise_target_maps(model, inputs, meta, det.bboxes[di], det.labels[di],
                                         **(drise or {}))
            elif method == 'vps':
                maps, _ = vps_target_maps(model, inputs, meta, det.bboxes[di], det.labels[di],
                                          **(vps or {}))
            else:  # gradient methods explain every detection in one batch
                maps = explain_batch(model, inputs, samples, method, target=target,
                                     normalize=None)[0].heatmaps[di]
            for name, values in localisation_scores(maps, gt, gi).items():
                scores[method][name] += values
            if len(di) and not examples:
                examples.append((meta.get('img_path'), gt[gi].cpu(), {}))
            if examples and examples[0][0] == meta.get('img_path'):
                examples[0][2][method] = maps.cpu()
            if deletion_steps:
                on_input = _maps_on_input(maps, meta, inputs.shape[-2:])
                scale = inputs.new_tensor(meta['scale_factor'][:2])
                for k, (d, j) in enumerate(zip(di.tolist(), gi.tolist())):
                    box = gt[j]
                    area = float(((box[2:] - box[:2]) * scale).prod())  # input pixels
                    out = deletion_insertion(predict_fn(model, meta), inputs[0], on_input[k],
                                             box, int(det.labels[d]), area, noise, black,
                                             deletion_steps, evidence)
                    for mode in ('deletion', 'insertion'):
                        scores[method][f'{mode}_auc'].append(out[f'{mode}_auc'])
                        scores[method]['curves'][mode].append(out[mode])
        images += 1
        if progress is not None:
            progress.update(1)
        if max_images and images >= max_images:
            break
    return dict(images=images, methods=scores, examples=examples)


def merge_scores(parts: list) -> dict:
    """Raw scores of several shards (e.g. ranks) -> one (examples of the first shard)."""
    merged = dict(images=sum(p['images'] for p in parts), methods={},
                  examples=next((p['examples'] for p in parts if p['examples']), []))
    for part in parts:
        for method, per_metric in part['methods'].items():
            out = merged['methods'].setdefault(
                method, {k: ({'deletion': [], 'insertion': []} if k == 'curves' else [])
                         for k in per_metric})
            for key, values in per_metric.items():
                if key == 'curves':
                    for mode in values:
                        out['curves'][mode] += values[mode]
                else:
                    out[key] += values
    return merged


def summarize_scores(raw: dict) -> dict:
    """{method: {metric: mean over objects (NaN-skipping), 'objects': K, 'images': n}}."""
    table = {}
    for method, per_metric in raw['methods'].items():
        row = {name: (float(np.nanmean(v)) if np.isfinite(v).any() else math.nan)
               for name, v in per_metric.items() if name != 'curves'}
        row.update(objects=len(per_metric['odi']), images=raw['images'])
        table[method] = row
    return table


def audit_explanations(model, dataloader, methods=('odam',), **kwargs) -> dict:
    """:func:`summarize_scores` of :func:`collect_explanation_scores` (same arguments)."""
    return summarize_scores(collect_explanation_scores(model, dataloader, methods, **kwargs))


def _maps_on_input(maps: torch.Tensor, meta: dict, pad_hw) -> torch.Tensor:
    """(K, H_ori, W_ori) maps -> (K, H_pad, W_pad) on the network input (resized to the
    unpadded input, zero in the padding)."""
    h, w = meta['img_shape'][:2]
    out = maps.new_zeros(len(maps), *pad_hw)
    if len(maps):
        out[:, :h, :w] = F.interpolate(maps[:, None], size=(h, w), mode='bilinear',
                                       align_corners=False)[:, 0]
    return out
