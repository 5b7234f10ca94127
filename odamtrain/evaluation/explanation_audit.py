"""Audit a detector's explanations on a dataset: how well each method's heat maps localise
the objects they explain and how faithful they are (the ODAM paper's Tables 1, 3a, 4; the
VPS paper's Tables 1 and 3).

Object sets (every method explains the same objects of a set):
* ``detected``: detections matched one-to-one to GT boxes with IoU > ``iou_thr`` (0.9:
  "well detected"), explained as detections;
* ``missed``: GT objects no detection with score >= ``score_thr`` overlaps with IoU > 0.5;
* ``misclassified``: GT objects such detections overlap, none of the GT's class (empty on
  one-class data such as CrowdHuman);
the failure sets are explained as targets (GT box + class; :func:`odamtrain.apis.
explain_batch`'s ``targets``). Each map is scored against its GT box and the image's other
GT boxes (:mod:`odamtrain.evaluation.functional.localisation`) and, optionally, by deleting /
inserting its pixels in heat order (:mod:`~odamtrain.evaluation.functional.faithfulness`):
AUCs, the highest evidence along insertion (VPS's average highest score with the default
evidence, [IoU > 0.5] x class score) and success (that highest score reaches
``score_thr``: the explanation's top pixels alone make the detector find the object; the
success rate is VPS's explanation success rate on the failure sets).
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData

from odamtrain.apis import explain_batch, pixel_to_input, predict_fn

from .functional import (
    compactness,
    deletion_insertion,
    energy_pointing_game,
    failure_sets,
    match_detections,
    object_discrimination_index,
    pointing_game,
)

__all__ = ['SETS', 'LOCALISATION_METRICS', 'METRIC_DIRECTIONS', 'localisation_scores',
           'collect_explanation_scores', 'merge_scores', 'summarize_scores',
           'audit_explanations']

SETS = ('detected', 'missed', 'misclassified')

# name -> (function of (heatmap, box, other_boxes), better direction)
LOCALISATION_METRICS = {
    'pointing_game': (lambda h, b, o: pointing_game(h, b), 'higher'),
    'energy_pointing_game': (lambda h, b, o: energy_pointing_game(h, b), 'higher'),
    'compactness': (lambda h, b, o: compactness(h, b), 'lower'),
    'odi': (object_discrimination_index, 'lower'),
}
FAITHFULNESS_METRICS = {'deletion_auc': 'lower', 'insertion_auc': 'higher',
                        'highest_score': 'higher', 'success': 'higher'}

# every metric of the audit -> which way is better
METRIC_DIRECTIONS = {**{name: d for name, (_, d) in LOCALISATION_METRICS.items()},
                     **FAITHFULNESS_METRICS}


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
                               iou_thr: float = 0.9, sets=('detected',),
                               score_thr: float = 0.3, max_images: int = 0,
                               deletion_steps: int = 0, evidence: str = 'odam',
                               extent: str = 'box', drise: dict | None = None,
                               vps: dict | None = None, seed: int = 0, progress=None) -> dict:
    """Explanation metrics of each method on the objects of ``sets`` (see module) of the
    dataloader's images (test pipeline with GT: ``gt_instances`` in original pixels), batch
    size 1.

    Args:
        methods: :data:`odamtrain.apis.METHODS` entries; every method explains the same
            objects (detections: mmdet's, or the Odam-NMS ones when the config uses it).
        sets: of :data:`SETS`; ``score_thr`` defines the failures and the success.
        deletion_steps: > 0 adds deletion / insertion AUCs, highest score and success
            (:func:`deletion_insertion`, ``steps`` forwards per curve and object, batched)
            with ``evidence``; deleted pixels become uniform noise (seeded by ``seed`` and
            the image, so a shard of the images scores them as the whole), insertion starts
            from black; ``extent`` 'box' changes area(GT box) pixels in all (ODAM paper),
            'image' the whole image (VPS paper).
        drise / vps: settings of those explainers (:func:`odamtrain.apis.explain_batch`).
    Returns:
        raw scores: {'images': n, 'sets': {set: {method: {metric: [per object], 'curves':
        {'deletion': [[...]], 'insertion': [[...]]}}}}, 'examples': [(img_path, boxes
        (K, 4), {method: maps (K, H, W)})] for the first image with detected objects}.
        Summarise with :func:`summarize_scores`; raw scores of several ranks merge with
        :func:`merge_scores`.
    """
    unknown = set(sets) - set(SETS)
    if unknown:
        raise ValueError(f'sets must be among {SETS}, got {sorted(unknown)}')
    if extent not in ('box', 'image'):
        raise ValueError(f"extent must be 'box' or 'image', got {extent!r}")
    metrics = list(LOCALISATION_METRICS) + (list(FAITHFULNESS_METRICS) if deletion_steps
                                            else [])
    scores = {s: {m: dict({name: [] for name in metrics},
                          curves={'deletion': [], 'insertion': []}) for m in methods}
              for s in sets}
    examples = []
    images = 0
    for data in dataloader:
        batch = model.data_preprocessor(data, False)
        inputs, samples = batch['inputs'], batch['data_samples']
        if len(samples) != 1:
            raise ValueError('audit_explanations needs a dataloader with batch_size=1')
        meta = samples[0].metainfo
        gt = samples[0].gt_instances
        gt_boxes = (gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes).to(inputs)
        gt_labels = gt.labels.to(inputs.device)
        with torch.no_grad():
            det = model.predict(inputs, [s.clone() for s in samples])[0].pred_instances
        objects = {}  # set -> (targets to explain or None (detections), their GT index)
        if 'detected' in sets:
            di, gi = match_detections(det.bboxes, det.scores, gt_boxes, iou_thr)
            objects['detected'] = (di, gi)
        if 'missed' in sets or 'misclassified' in sets:
            missed, wrong = failure_sets(det.bboxes, det.labels, det.scores, gt_boxes,
                                         gt_labels, score_thr)
            objects.update({name: (None, idx) for name, idx in
                            (('missed', missed), ('misclassified', wrong)) if name in sets})
        noise = pixel_to_input(model, torch.rand(
            3, *inputs.shape[-2:], generator=_image_generator(seed, meta)) * 255)
        black = pixel_to_input(model, inputs.new_zeros(3, *inputs.shape[-2:]))
        for method in methods:
            detections = None
            for name, (di, gi) in objects.items():
                if len(gi) == 0:
                    continue
                if di is None:  # a failure set: explain the GT objects as targets
                    labels = gt_labels[gi]
                    targets = InstanceData(bboxes=gt_boxes[gi], labels=labels)
                    maps = _explain(model, inputs, samples, method, target, drise, vps,
                                    targets)
                else:
                    labels = det.labels[di]
                    if method in ('drise', 'vps'):  # black box: only the matched ones
                        maps = _explain(model, inputs, samples, method, target, drise, vps,
                                        det[di])
                    else:  # gradient methods explain every detection in one batch
                        if detections is None:
                            detections = _explain(model, inputs, samples, method, target,
                                                  drise, vps)
                        maps = detections[di]
                    if not examples:
                        examples.append((meta.get('img_path'), gt_boxes[gi].cpu(), {}))
                    if examples[0][0] == meta.get('img_path'):
                        examples[0][2][method] = maps.cpu()
                out = scores[name][method]
                for metric, values in localisation_scores(maps, gt_boxes, gi).items():
                    out[metric] += values
                if deletion_steps:
                    _faithfulness(model, inputs, meta, maps, gt_boxes[gi], labels, noise,
                                  black, deletion_steps, evidence, extent, score_thr, out)
        images += 1
        if progress is not None:
            progress.update(1)
        if max_images and images >= max_images:
            break
    return dict(images=images, sets=scores, examples=examples)


def _image_generator(seed: int, meta: dict) -> torch.Generator:
    """A generator seeded by ``seed`` and the image (its path, else its id)."""
    key = str(meta.get('img_path', meta.get('img_id', ''))).encode()
    return torch.Generator().manual_seed(seed * 2 ** 32 + zlib.crc32(key))


def _explain(model, inputs, samples, method, target, drise, vps, targets=None):
    """(K, H, W) unnormalised maps of the detections (``targets`` None) or the targets."""
    return explain_batch(model, inputs, samples, method=method, target=target, normalize=None,
                         drise=drise, vps=vps,
                         targets=None if targets is None else [targets])[0].heatmaps


def _faithfulness(model, inputs, meta, maps, boxes, labels, noise, black, steps, evidence,
                  extent, score_thr, out) -> None:
    """Append each map's deletion / insertion scores and curves to ``out``."""
    on_input = _maps_on_input(maps, meta, inputs.shape[-2:])
    scale = inputs.new_tensor(meta['scale_factor'][:2])
    h, w = meta['img_shape'][:2]
    for k, (box, label) in enumerate(zip(boxes, labels.tolist())):
        area = float(((box[2:] - box[:2]) * scale).prod()) if extent == 'box' else h * w
        curves = deletion_insertion(predict_fn(model, meta), inputs[0], on_input[k], box,
                                    label, area, noise, black, steps, evidence)
        highest = max(curves['insertion'])
        for mode in ('deletion', 'insertion'):
            out[f'{mode}_auc'].append(curves[f'{mode}_auc'])
            out['curves'][mode].append(curves[mode])
        out['highest_score'].append(highest)
        out['success'].append(float(highest >= score_thr))


def merge_scores(parts: list) -> dict:
    """Raw scores of several shards (e.g. ranks) -> one (examples of the first shard)."""
    merged = dict(images=sum(p['images'] for p in parts), sets={},
                  examples=next((p['examples'] for p in parts if p['examples']), []))
    for part in parts:
        for name, per_method in part['sets'].items():
            for method, per_metric in per_method.items():
                out = merged['sets'].setdefault(name, {}).setdefault(
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
    """{set: {method: {metric: mean over objects (NaN-skipping), 'objects': K,
    'images': n}}}."""
    table = {}
    for name, per_method in raw['sets'].items():
        table[name] = {}
        for method, per_metric in per_method.items():
            row = {k: (float(np.nanmean(v)) if np.isfinite(v).any() else math.nan)
                   for k, v in per_metric.items() if k != 'curves'}
            row.update(objects=len(per_metric['odi']), images=raw['images'])
            table[name][method] = row
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
