"""Audit a detector's explanations on a dataset: how well each method's heat maps localise
the objects they explain and how faithful they are (the ODAM paper's Tables 1, 3a, 4; the
VPS paper's Tables 1 and 3).

Three steps per image and method, from ONE call of :func:`odamtrain.apis.explain_batch`
(one forward of the detector; its ``choose`` picks the objects from that forward's
detections, which are mmdet's detections):

1. choose the objects (:func:`choose_objects`), per object set:

   * ``detected``: detections matched one-to-one to GT boxes with IoU > ``iou_thr`` (0.9:
     "well detected"), explained as detections;
   * ``missed``: GT objects no detection with score >= ``score_thr`` overlaps with IoU > 0.5;
   * ``misclassified``: GT objects such detections overlap, none of the GT's class (empty
     on one-class data such as CrowdHuman);

   the failure sets are explained as targets (GT box + class; ``explain_batch``'s
   ``targets``);
2. explain them (the same call: the gradient methods with one batched backward, D-RISE and
   D-HSIC with one set of masks for all of them, VPS one search each);
3. score them (:func:`score_objects`): each map against its GT box and the image's other GT
   boxes (:mod:`odamtrain.evaluation.functional.localisation`) and, optionally, by deleting /
   inserting its pixels in heat order (:mod:`~odamtrain.evaluation.functional.faithfulness`):
   AUCs, the highest evidence along insertion (VPS's average highest score with the default
   evidence, [IoU > 0.5] x class score) and success (that highest score reaches
   ``score_thr``; the success rate is VPS's explanation success rate on the failure sets).

Undefined values are NaN (the metrics' one policy); means skip them.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData

from odamtrain.apis import explain_batch, pixel_to_input, predict_fn
from odamtrain.explain import (
    METHODS,
    DhsicSettings,
    DriseSettings,
    ExplanationSettings,
    VpsSettings,
)
from odamtrain.inference import image_window

from .functional import (
    EVIDENCES,
    compactness,
    deletion_auc,
    deletion_insertion,
    energy_pointing_game,
    explanation_success,
    failure_sets,
    highest_score,
    insertion_auc,
    match_detections,
    object_discrimination_index,
    pointing_game,
)

__all__ = ['SETS', 'EXTENTS', 'DELETION_BASELINES', 'LOCALISATION_METRICS',
           'FAITHFULNESS_METRICS',
           'METRIC_DIRECTIONS', 'AuditSettings', 'choose_objects', 'localisation_scores',
           'score_objects', 'collect_explanation_scores', 'merge_scores', 'summarize_scores']

SETS = ('detected', 'missed', 'misclassified')
EXTENTS = ('box', 'image')

# name -> metric function (declares .direction and .paper)
LOCALISATION_METRICS = {'pointing_game': pointing_game,
                        'energy_pointing_game': energy_pointing_game,
                        'compactness': compactness, 'odi': object_discrimination_index}
FAITHFULNESS_METRICS = {'deletion_auc': deletion_auc, 'insertion_auc': insertion_auc,
                        'highest_score': highest_score, 'success': explanation_success}
# every metric of the audit -> which way is better; the AUCs under an extra evidence E are
# 'deletion_auc_E' / 'insertion_auc_E'
METRIC_DIRECTIONS = {name: fn.direction for name, fn in
                     {**LOCALISATION_METRICS, **FAITHFULNESS_METRICS}.items()}
METRIC_DIRECTIONS.update({f'{auc}_{e}': METRIC_DIRECTIONS[auc] for e in EVIDENCES
                          for auc in ('deletion_auc', 'insertion_auc')})
DELETION_BASELINES = ('noise', 'black')


@dataclass(frozen=True)
class AuditSettings:
    """What the audit explains and scores (module), validated when built.

    Args:
        methods: of :data:`odamtrain.explain.METHODS`; every method explains the same
            objects.
        target: the explained attribute of the gradient methods (ExplanationSettings).
        sets: of :data:`SETS`.
        iou_thr: detection-GT IoU above which an object is ``detected``.
        score_thr: detections below it do not count (the failure sets), and the evidence
            an insertion curve must reach for the explanation's success.
        deletion_steps: > 0 adds deletion / insertion AUCs, highest score and success
            (``steps`` forwards per curve and object, batched); insertion starts from black.
        deletion_baseline: what deleted pixels become: 'noise' (uniform, the ODAM paper)
            or 'black' (the VPS paper).
        evidence: of :data:`odamtrain.structures.EVIDENCES`, what the curves read.
        extra_evidences: more evidences whose deletion / insertion AUCs are read from the
            same predictions (``deletion_auc_E``, ``insertion_auc_E``); the VPS paper's
            Table 1: ``evidence='vps', extra_evidences=('class', 'iou')``.
        extent: 'box' changes area(GT box) pixels in all (ODAM paper), 'image' the whole
            image (VPS paper).
        drise: :class:`~odamtrain.explain.DriseSettings` or its fields as a dict.
        dhsic: :class:`~odamtrain.explain.DhsicSettings` or its fields as a dict.
        vps: :class:`~odamtrain.explain.VpsSettings` or its fields as a dict.
        seed: of the deletion noise, with the image (so that a shard of the images scores
            them as the whole); the masks' seeds are ``drise`` / ``dhsic``'s own.
        verify: check on the first image that the detections the gradient methods explain
            are the detector's own ``predict`` (a mismatch is an error naming it).
    """
    methods: tuple = ('odam',)
    target: str = 'score'
    sets: tuple = ('detected',)
    iou_thr: float = 0.9
    score_thr: float = 0.3
    deletion_steps: int = 0
    deletion_baseline: str = 'noise'
    evidence: str = 'odam'
    extra_evidences: tuple = ()
    extent: str = 'box'
    drise: DriseSettings | dict | None = None
    dhsic: DhsicSettings | dict | None = None
    vps: VpsSettings | dict | None = None
    seed: int = 0
    verify: bool = True

    def __post_init__(self):
        for name, allowed in (('methods', METHODS), ('sets', SETS)):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            value = tuple(value)
            unknown = [v for v in value if v not in allowed]
            if unknown or not value:
                raise ValueError(f'audit {name} must be a non-empty list of {allowed}, got '
                                 f'{list(value)!r}')
            object.__setattr__(self, name, value)
        extra = self.extra_evidences
        extra = (extra,) if isinstance(extra, str) else tuple(extra)
        if any(e not in EVIDENCES for e in extra) or len(set(extra)) < len(extra):
            raise ValueError(f'audit extra_evidences must be distinct of {EVIDENCES}, got '
                             f'{list(extra)!r}')
        object.__setattr__(self, 'extra_evidences', extra)
        for name, allowed in (('evidence', EVIDENCES), ('extent', EXTENTS),
                              ('deletion_baseline', DELETION_BASELINES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f'audit {name} must be one of {allowed}, got '
                                 f'{getattr(self, name)!r}')
        for name in ('iou_thr', 'score_thr'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= 1:
                raise ValueError(f'audit {name} must be a number in [0, 1], got {value!r}')
        for name in ('deletion_steps', 'seed'):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f'audit {name} must be an integer >= 0, got {value!r}')
        if type(self.verify) is not bool:
            raise ValueError(f'audit verify must be True or False, got {self.verify!r}')
        # the explainers' own checks (target, drise, dhsic, vps) run here, before any work
        checked = ExplanationSettings(target=self.target, drise=self.drise, dhsic=self.dhsic,
                                      vps=self.vps)
        object.__setattr__(self, 'drise', checked.drise)
        object.__setattr__(self, 'dhsic', checked.dhsic)
        object.__setattr__(self, 'vps', checked.vps)

    @classmethod
    def build(cls, settings=None, **overrides) -> AuditSettings:
        """``settings`` (an AuditSettings, a dict or None) with keyword overrides."""
        if isinstance(settings, AuditSettings):
            settings = {f.name: getattr(settings, f.name) for f in fields(cls)}
        settings = {**(settings or {}), **overrides}
        unknown = set(settings) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f'unknown audit settings {sorted(unknown)}; expected '
                             f'{[f.name for f in fields(cls)]}')
        return cls(**settings)

    def explanation(self, method: str) -> ExplanationSettings:
        """The ExplanationSettings of one method (unnormalised maps at image size)."""
        return ExplanationSettings(method=method, target=self.target, normalize=None,
                                   drise=self.drise, dhsic=self.dhsic, vps=self.vps)

    def to_dict(self) -> dict:
        """Plain values (for the report)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def choose_objects(det: InstanceData, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                   settings: AuditSettings) -> dict:
    """Step 1 for one image: {set: (det_index (K,) int64 or None, gt_index (K,) int64)}.

    Args:
        det: the image's detections (``bboxes`` (N, 4) x1y1x2y2 original pixels,
            ``scores``, ``labels``); gt_boxes: (M, 4) same pixels, gt_labels: (M,).
    Returns:
        ``detected``: the matched detections and their GT; the failure sets: None and the
        GT objects (explained as targets); only the sets of ``settings.sets``.
    """
    objects = {}
    if 'detected' in settings.sets:
        objects['detected'] = match_detections(det.bboxes, det.scores, gt_boxes.to(det.bboxes),
                                               settings.iou_thr)
    if 'missed' in settings.sets or 'misclassified' in settings.sets:
        missed, wrong = failure_sets(det.bboxes, det.labels, det.scores, gt_boxes, gt_labels,
                                     settings.score_thr)
        objects.update({name: (None, idx) for name, idx in
                        (('missed', missed), ('misclassified', wrong))
                        if name in settings.sets})
    return objects


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
        for name, fn in LOCALISATION_METRICS.items():
            out[name].append(fn(heatmaps[k], gt_boxes[g], others) if name == 'odi'
                             else fn(heatmaps[k], gt_boxes[g]))
    return out


def score_objects(model, inputs: torch.Tensor, meta: dict, maps: torch.Tensor,
                  gt_boxes: torch.Tensor, gt_index: torch.Tensor, labels: torch.Tensor,
                  settings: AuditSettings) -> dict:
    """Step 3: {metric: K floats, 'curves': {'deletion': K curves, 'insertion': ...}} of K
    maps (K, H_ori, W_ori) explaining the GT boxes ``gt_index`` with class ``labels``;
    faithfulness only with ``settings.deletion_steps`` (module)."""
    out = localisation_scores(maps, gt_boxes, gt_index)
    out['curves'] = {'deletion': [], 'insertion': []}
    if not settings.deletion_steps:
        return out
    out.update({name: [] for name in [*FAITHFULNESS_METRICS, *_extra_aucs(settings)]})
    (top, left), (h, w) = image_window(meta)
    window = (slice(None), slice(top, top + h), slice(left, left + w))
    black, deleted = inputs[0].clone(), inputs[0].clone()  # the padding stays as it is
    black[window] = pixel_to_input(model, inputs.new_zeros(3, h, w))
    deleted[window] = black[window] if settings.deletion_baseline == 'black' else \
        pixel_to_input(model, torch.rand(  # drawn on the CPU: the same on any device
            3, *inputs.shape[-2:], generator=_image_generator(settings.seed, meta)
        ).to(inputs)[window] * 255)
    on_input = _maps_on_input(maps, meta, inputs.shape[-2:])
    scale = inputs.new_tensor(meta.get('scale_factor', (1.0, 1.0))[:2])
    predict = predict_fn(model, meta)
    for k, (g, label) in enumerate(zip(gt_index.tolist(), labels.tolist())):
        box = gt_boxes[g]
        area = float(((box[2:] - box[:2]) * scale).prod()) if settings.extent == 'box' \
            else h * w
        curves = deletion_insertion(predict, inputs[0], on_input[k], box, label, area,
                                    deleted, black, settings.deletion_steps,
                                    settings.evidence,
                                    extra_evidences=settings.extra_evidences)
        for mode in ('deletion', 'insertion'):
            out['curves'][mode].append(curves[mode])
        out['deletion_auc'].append(deletion_auc(curves['deletion']))
        out['insertion_auc'].append(insertion_auc(curves['insertion']))
        out['highest_score'].append(highest_score(curves['insertion']))
        out['success'].append(explanation_success(curves['insertion'], settings.score_thr))
        for key in _extra_aucs(settings):
            out[key].append(curves[key])
    return out


def _extra_aucs(settings: AuditSettings) -> list:
    """The metric names of the AUCs under the extra evidences."""
    return [f'{auc}_{e}' for e in settings.extra_evidences
            for auc in ('deletion_auc', 'insertion_auc')]


def collect_explanation_scores(model, dataloader, settings: AuditSettings | dict | None = None,
                               max_images: int = 0, progress=None, **overrides) -> dict:
    """Explanation metrics of each method on the objects of the chosen sets (module) of the
    dataloader's images (test pipeline with GT: ``gt_instances`` in original pixels), batch
    size 1.

    Args:
        settings / overrides: :class:`AuditSettings` (or its fields), checked first.
        max_images: at most this many images (0: all).
        progress: an object with ``update(1)`` per image.
    Returns:
        raw scores: {'images': n, 'sets': {set: {method: {metric: [per object], 'gt_index':
        [(img_id, GT index) per object], 'curves': {'deletion': [[...]], 'insertion': [[...]]}}}},
        'examples': [(img_path, boxes (K, 4), {method: maps (K, H, W)})] for the first image
        with detected objects}. Summarise with :func:`summarize_scores`; raw scores of
        several ranks merge with :func:`merge_scores`.
    """
    s = AuditSettings.build(settings, **overrides)
    metrics = list(LOCALISATION_METRICS) + ([*FAITHFULNESS_METRICS, *_extra_aucs(s)]
                                            if s.deletion_steps else [])
    scores = {name: {m: dict({k: [] for k in metrics}, gt_index=[],
                             curves={'deletion': [], 'insertion': []}) for m in s.methods}
              for name in s.sets}
    examples = []
    images = 0
    for data in dataloader:
        batch = model.data_preprocessor(data, False)
        inputs, samples = batch['inputs'], batch['data_samples']
        if len(samples) != 1:
            raise ValueError('the explanation audit needs a dataloader with batch_size=1')
        meta = samples[0].metainfo
        image_id = meta.get('img_id', meta.get('img_path'))
        gt = samples[0].gt_instances
        gt_boxes = (gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes).to(inputs)
        gt_labels = gt.labels.to(inputs.device)
        for method in s.methods:
            rows = _explain_objects(model, inputs, samples, gt_boxes, gt_labels, s, method,
                                    verify=s.verify and images == 0)
            for name, (gi, maps, labels) in rows.items():
                out = scores[name][method]
                for key, values in score_objects(model, inputs, meta, maps, gt_boxes, gi,
                                                 labels, s).items():
                    if key == 'curves':
                        for mode in values:
                            out['curves'][mode] += values[mode]
                    else:
                        out[key] += values
                out['gt_index'] += [(image_id, g) for g in gi.tolist()]
                if name == 'detected' and len(gi):
                    if not examples:
                        examples.append((meta.get('img_path'), gt_boxes[gi].cpu(), {}))
                    if examples[0][0] == meta.get('img_path'):
                        examples[0][2][method] = maps.cpu()
        images += 1
        if progress is not None:
            progress.update(1)
        if max_images and images >= max_images:
            break
    return dict(images=images, sets=scores, examples=examples)


def _explain_objects(model, inputs, samples, gt_boxes, gt_labels, s: AuditSettings,
                     method: str, verify: bool = False):
    """Steps 1 and 2 for one image and method in one ``explain_batch`` call:
    {set: (gt_index (K,), maps (K, H, W), labels (K,))}."""
    objects = {}
    failures = [name for name in ('missed', 'misclassified') if name in s.sets]

    def choose(i, det):
        objects.update(choose_objects(det, gt_boxes, gt_labels, s))
        det_index = objects['detected'][0] if 'detected' in objects \
            else torch.zeros(0, dtype=torch.long)
        gi = torch.cat([objects[name][1] for name in failures]) if failures \
            else torch.zeros(0, dtype=torch.long)
        return det_index, InstanceData(bboxes=gt_boxes[gi], labels=gt_labels[gi])

    res = explain_batch(model, inputs, samples, s.explanation(method), choose=choose,
                        verify=verify)[0]
    rows, start = {}, 0
    for name in (n for n in SETS if n in s.sets):  # the detected first, then the failures
        gi = objects[name][1]
        sl = slice(start, start + len(gi))
        rows[name] = (gi, res.heatmaps[sl], res.labels[sl])
        start += len(gi)
    return rows


def _image_generator(seed: int, meta: dict) -> torch.Generator:
    """A generator seeded by ``seed`` and the image (its path, else its id)."""
    key = str(meta.get('img_path', meta.get('img_id', ''))).encode()
    return torch.Generator().manual_seed(seed * 2 ** 32 + zlib.crc32(key))


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
    'undefined': {metric: NaN count} (where > 0), 'images': n}}}."""
    table = {}
    for name, per_method in raw['sets'].items():
        table[name] = {}
        for method, per_metric in per_method.items():
            values = {k: np.asarray(v, dtype=float) for k, v in per_metric.items()
                      if k in METRIC_DIRECTIONS}
            row = {k: (float(np.nanmean(v)) if np.isfinite(v).any() else math.nan)
                   for k, v in values.items()}
            undefined = {k: int(np.isnan(v).sum()) for k, v in values.items()
                         if np.isnan(v).any()}
            row.update(objects=len(per_metric['odi']), images=raw['images'])
            if undefined:
                row['undefined'] = undefined
            table[name][method] = row
    return table


def _maps_on_input(maps: torch.Tensor, meta: dict, pad_hw) -> torch.Tensor:
    """(K, H_ori, W_ori) maps >= 0 -> (K, H_pad, W_pad) on the network input: resized to the
    image in it, -1 in the padding (last in the heat order: the image's pixels are deleted
    or inserted first)."""
    (top, left), (h, w) = image_window(meta)
    out = maps.new_full((len(maps), *pad_hw), -1.0)
    if len(maps):
        out[:, top:top + h, left:left + w] = F.interpolate(
            maps[:, None], size=(h, w), mode='bilinear', align_corners=False)[:, 0]
    return out
