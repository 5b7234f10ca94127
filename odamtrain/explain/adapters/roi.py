"""Adapters of mmdet's two-stage detectors: the only code that knows their RoI heads'
internals.

Shapes: R RoIs of the batch, n predictions, C channels, (s, s) the RoI feature size, K
classes (+1 background).

A prediction's provenance: ``roi`` (index into the batch's RoIs, the same in every stage),
``labels`` and ``img`` (CrowdDet adds ``instance``). A (``features``): 'roi' (the paper), the
RoI features every stage's box head reads (its inputs, made leaves of the graph by
:func:`box_head_reads` around the RoI head's own ``_bbox_forward``): Faster / Mask R-CNN
one stage, Double-Head two reads, Cascade R-CNN, HTC and SCNet all stages (mmdet averages
the stages' class logits, then softmax; the box is the last stage's regression of the last
stage's RoIs; HTC and SCNet add semantic / global context features to what their box heads
read); MS R-CNN and Grid R-CNN add what their mask-IoU / grid branch reads at each
detection's box; or 'fpn' (one stage): the FPN levels, through RoIAlign's backward. The box
head treats RoIs independently, so one backward of a sum of predictions on distinct RoIs
gives each its own gradient.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple

import torch
from mmdet.models.detectors import TwoStageDetector
from mmdet.models.layers import multiclass_nms
from mmdet.models.roi_heads import (
    BaseRoIHead,
    CascadeRoIHead,
    DoubleHeadRoIHead,
    GridRoIHead,
    HybridTaskCascadeRoIHead,
    MaskScoringRoIHead,
    MultiInstanceRoIHead,
    SCNetRoIHead,
    StandardRoIHead,
)
from mmdet.models.roi_heads.bbox_heads import BBoxHead, MultiInstanceBBoxHead, SABLHead
from mmdet.models.roi_heads.mask_heads import GridHead, MaskIoUHead
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.structures.bbox import bbox2roi, bbox_overlaps, get_box_tensor
from mmengine.structures import InstanceData

from ..protocol import BOX_SIDES, DetectorAdapter, Forward, Same, scales
from ..roi_gradients import fpn_heatmaps, roi_heatmaps, roi_positive_maps

__all__ = ['RoIForward', 'RoITrainStep', 'StandardRoIAdapter', 'CascadeRoIAdapter',
           'DoubleHeadRoIAdapter', 'HTCRoIAdapter', 'SCNetRoIAdapter', 'MaskScoringRoIAdapter',
           'CrowdDetRoIAdapter', 'GridRoIAdapter', 'SABLRoIAdapter', 'SABLCascadeRoIAdapter',
           'ROI_ADAPTERS', 'take_rows', 'box_head_reads']

_TWO_STAGE = Same('detector', (TwoStageDetector.predict, TwoStageDetector.extract_feat))
_BOX_HEAD = Same('bbox_head', (BBoxHead.predict_by_feat, BBoxHead._predict_by_feat_single))


def take_rows(bbox_pred, index):
    """The rows ``index`` of a box head's regression output: a tensor, SABL's pair
    (bucket scores, bucket offsets), or None (no regression: Grid R-CNN)."""
    if bbox_pred is None:
        return None
    if torch.is_tensor(bbox_pred):
        return bbox_pred[index]
    return tuple(part[index] for part in bbox_pred)


@contextlib.contextmanager
def box_head_reads(bbox_head: torch.nn.Module, leaf: bool):
    """Inside, the tensors ``bbox_head`` is called with (its RoI features, one tensor per
    read) are recorded in the list yielded; with ``leaf`` each is first detached into a
    leaf of the graph (A). The hook is removed on exit, also on error."""
    reads = []

    def hook(module, args):
        if leaf:
            args = tuple(a.detach().requires_grad_(True) if torch.is_tensor(a) else a
                         for a in args)
        reads.extend(a for a in args if torch.is_tensor(a))
        return args

    handle = bbox_head.register_forward_pre_hook(hook)
    try:
        yield reads
    finally:
        handle.remove()


@dataclass
class RoIForward(Forward):
    """One forward of the RoI head. Per RoI read (a cascade's stages, Double-Head's class and
    box reads) one entry of ``rois`` and ``roi_feats``.

    Attributes:
        feats: A: the ``roi_feats`` or the ``levels``, as ``features`` says.
        metas: the images' metainfo.
        rois: per read (R, 5) (batch index, x1y1x2y2 input pixels).
        roi_feats: per read (R, C, s, s) read there (leaves with 'roi').
        cls_score: (R, K + 1) logits as mmdet scores them (Cascade: the stages' mean), with
            the graph to A.
        bbox_pred: (R, 4 K | 4) decoded from ``box_rois``, with the graph to A.
        counts: RoIs per image.
        levels: the FPN levels (leaves with 'fpn').
        features: 'roi' or 'fpn'.
        box_rois: (R, 5) the RoIs the boxes are decoded from.
    """
    rois: list = None
    roi_feats: list = None
    cls_score: torch.Tensor = None
    bbox_pred: torch.Tensor = None
    counts: list = None
    levels: list = None
    features: str = 'roi'
    box_rois: torch.Tensor = None


class RoITrainStep(NamedTuple):
    """A stage of a RoI head's training step as Odam-Train reads it: ``bbox_results`` of
    its ``bbox_loss`` (``bbox_feats``, ``cls_score``, ``bbox_pred`` of the sampled RoIs) and
    the sampler's ``sampling_results``; ``stage`` (None for a one-stage RoI head)."""
    stage: int | None
    bbox_results: dict
    sampling_results: list


class StandardRoIAdapter(DetectorAdapter):
    """``StandardRoIHead`` (Faster R-CNN, Mask R-CNN and the like, whose mask branch does not
    rescore): A = each RoI's features (the paper), or with ``features='fpn'`` the RoI's FPN
    level through RoIAlign's backward."""
    head_type = StandardRoIHead
    features = ('auto', 'roi', 'fpn')
    # a branch that reads the levels again at each detection's box after NMS and changes
    # what is explained (MS R-CNN's mask IoU, Grid R-CNN's grid): the RoI head's attribute
    # of its RoI extractor, and the targets that read it
    detection_branch: tuple | None = None
    reproduces = (_TWO_STAGE, _BOX_HEAD,
                  Same('head', (BaseRoIHead.predict, StandardRoIHead.predict_bbox,
                                StandardRoIHead._bbox_forward, StandardRoIHead.predict_mask)))

    @property
    def roi_head(self):
        return self.head

    @property
    def test_cfg(self):
        return self.roi_head.test_cfg

    @property
    def bbox_head(self):
        """The box head whose decoding and test config give the detections (last stage)."""
        return self.roi_head.bbox_head

    @property
    def extractor(self):
        return self.roi_head.bbox_roi_extractor

    def stage_parts(self, name: str) -> list:
        """The stages' box heads or RoI extractors (``name`` 'bbox_head' /
        'bbox_roi_extractor')."""
        part = getattr(self.roi_head, name)
        return list(part) if isinstance(part, torch.nn.ModuleList) else [part]

    def parts(self) -> dict:
        return dict(super().parts(), bbox_head=self.stage_parts('bbox_head'))

    def check_features(self, features: str) -> str:
        features = 'roi' if super().check_features(features) == 'auto' else features
        if features == 'fpn' and type(self.extractor) is not SingleRoIExtractor:
            raise ValueError(f"{self.name}: features='fpn' needs mmdet's SingleRoIExtractor "
                             f'(its level mapping), not {type(self.extractor).__name__}')
        return features

    # ------------------------------------------------------------------ forward
    def forward(self, inputs, data_samples, features='auto') -> RoIForward:
        """mmdet's two-stage ``predict`` up to the box head: the RPN's proposals (or, without
        an RPN, the data samples' ``proposals``), then :meth:`forward_rois`."""
        features = self.check_features(features)
        with torch.no_grad():
            feats = self.model.extract_feat(inputs)
            if data_samples[0].get('proposals', None) is None:
                proposals = self.model.rpn_head.predict(feats, data_samples, rescale=False)
            else:
                proposals = [s.proposals for s in data_samples]
        return self.forward_rois(feats, proposals, [s.metainfo for s in data_samples],
                                 features)

    def roi_context(self, levels) -> dict:
        """What the head's ``_bbox_forward`` reads besides the levels and the RoIs (HTC's
        semantic features, SCNet's global context), as its ``predict`` computes it."""
        return {}

    def _bbox_forward(self, stage: int, levels, rois, context: dict) -> dict:
        """The RoI head's own ``_bbox_forward`` of ``stage``."""
        return self.roi_head._bbox_forward(levels, rois)

    def read_rois(self, stage: int, rois: torch.Tensor) -> list:
        """(R, 5) the box each of the box head's inputs at ``stage`` was read from, one per
        input (Double-Head: the class read's and the enlarged box read's)."""
        return [rois]

    def _stage_forward(self, stage: int, levels, rois, features: str, context: dict):
        """(reads, cls_score, bbox_pred) of the RoI head's own ``_bbox_forward``: ``reads``
        the box head's inputs (R, C, s, s) each, leaves with 'roi', else with the graph to
        the levels."""
        bbox_head = self.stage_parts('bbox_head')[stage]
        with box_head_reads(bbox_head, leaf=features == 'roi') as reads:
            out = self._bbox_forward(stage, levels, rois.detach(), context)
        return reads, out['cls_score'], out['bbox_pred']

    def forward_rois(self, feats, proposals: list, metas: list, features: str = 'roi',
                     context: dict | None = None) -> RoIForward:
        """The box head on the proposals with the graph from A (grad enabled inside);
        ``context`` as :meth:`roi_context` (computed when None)."""
        rois = bbox2roi([p.bboxes for p in proposals])
        with torch.enable_grad():
            levels = [f.detach().requires_grad_(features == 'fpn') for f in feats]
            if context is None:
                with torch.no_grad():
                    context = self.roi_context(levels)
            reads, cls_score, bbox_pred = self._stage_forward(0, levels, rois, features,
                                                              context)
        return RoIForward(levels if features == 'fpn' else reads, metas,
                          self.read_rois(0, rois), reads, cls_score, bbox_pred,
                          [len(p) for p in proposals], levels, features, rois)

    # -------------------------------------------------------------- predictions
    def _per_roi(self, fwd: RoIForward, sl: slice, meta: dict) -> InstanceData:
        """mmdet's per-RoI decoding for one image (boxes (r, 4 K) original pixels, scores
        (r, K + 1); ``factors`` (r,) where :meth:`score_factors` has them), without NMS and
        without a graph."""
        with torch.no_grad():
            per_roi = self.bbox_head._predict_by_feat_single(
                fwd.box_rois[sl], fwd.cls_score[sl], take_rows(fwd.bbox_pred, sl), meta,
                rescale=True, rcnn_test_cfg=None)
            factors = self.score_factors(fwd, torch.arange(sl.start, sl.stop,
                                                           device=fwd.box_rois.device))
        if factors is not None:
            per_roi.factors = factors
        return per_roi

    def score_factors(self, fwd: RoIForward, roi: torch.Tensor) -> torch.Tensor | None:
        """(n,) what mmdet's NMS multiplies the class probabilities of RoIs ``roi`` by,
        with the graph (SABL's localisation confidence), or None."""
        return None

    def _slices(self, fwd: RoIForward):
        start = 0
        for count in fwd.counts:
            yield slice(start, start + count)
            start += count

    def predictions(self, fwd, cfg=None) -> list:
        """mmdet's decoding and ``multiclass_nms(..., return_inds=True)``, as
        ``bbox_head.predict_by_feat``; provenance ``roi`` (batch index) and ``img``."""
        rcnn_cfg = self.test_cfg if cfg is None else cfg
        dets = []
        for i, (sl, meta) in enumerate(zip(self._slices(fwd), fwd.metas)):
            per_roi = self._per_roi(fwd, sl, meta)
            num_classes = per_roi.scores.shape[1] - 1  # (the boxes may be class-agnostic)
            det, labels, inds = multiclass_nms(per_roi.bboxes, per_roi.scores,
                                               rcnn_cfg.score_thr, rcnn_cfg.nms,
                                               rcnn_cfg.max_per_img,
                                               score_factors=per_roi.get('factors', None),
                                               return_inds=True)
            dets.append(InstanceData(bboxes=det[:, :-1], scores=det[:, -1], labels=labels,
                                     roi=inds // num_classes + sl.start,
                                     img=torch.full_like(labels, i)))
        return dets

    def candidates(self, fwd, score_thr: float | None = None) -> list:
        """The (RoI, class) pairs scoring above ``score_thr`` (default: the test config's),
        RoI-major as in mmdet's ``multiclass_nms`` (what reaches NMS)."""
        score_thr = self.test_cfg.score_thr if score_thr is None else score_thr
        cands = []
        for i, (sl, meta) in enumerate(zip(self._slices(fwd), fwd.metas)):
            per_roi = self._per_roi(fwd, sl, meta)
            n, k = per_roi.scores.shape[0], per_roi.scores.shape[1] - 1
            boxes = per_roi.bboxes.view(n, -1, 4).expand(n, k, 4)
            scores = per_roi.scores[:, :-1]
            if 'factors' in per_roi:
                scores = scores * per_roi.factors[:, None]
            roi, labels = (scores > score_thr).nonzero(as_tuple=True)
            cands.append(InstanceData(bboxes=boxes[roi, labels], scores=scores[roi, labels],
                                      labels=labels, roi=roi + sl.start,
                                      img=torch.full_like(labels, i)))
        return cands

    def every_prediction(self, fwd) -> list:
        return self.candidates(fwd, score_thr=-1.0)

    # ---------------------------------------------------------------- attribute
    def attribute(self, target, fwd, preds):
        """'score' is the softmax probability (times :meth:`score_factors`), as mmdet
        scores."""
        cls_score = fwd.cls_score[preds.roi]
        if target == 'logit':
            return cls_score.gather(1, preds.labels[:, None])[:, 0]
        if target == 'score':
            score = cls_score.softmax(-1).gather(1, preds.labels[:, None])[:, 0]
            factors = self.score_factors(fwd, preds.roi)
            return score if factors is None else score * factors
        if target in BOX_SIDES:
            boxes = self.boxes(take_rows(fwd.bbox_pred, preds.roi), fwd.box_rois[preds.roi, 1:],
                               preds.labels)
            i = BOX_SIDES.index(target)
            return boxes[:, i] / scales(fwd.metas, boxes)[preds.img, i % 2]
        raise ValueError(f"target must be 'score', 'logit' or one of {BOX_SIDES}, "
                         f'got {target!r}')

    def detection_rois(self, fwd, preds) -> torch.Tensor:
        """(n, 5) each prediction's image and box (input pixels) as mmdet's ``predict_bbox``
        gives it unrescaled (where a mask or grid branch reads), with the graph to the box
        head's regression."""
        rois = fwd.box_rois.new_zeros(len(preds), 5)
        for i, meta in enumerate(fwd.metas):
            rows = (preds.img == i).nonzero()[:, 0]
            if len(rows) == 0:
                continue
            roi = preds.roi[rows]
            boxes = self.bbox_head._predict_by_feat_single(
                fwd.box_rois[roi], fwd.cls_score[roi], take_rows(fwd.bbox_pred, roi), meta,
                rescale=False, rcnn_test_cfg=None).bboxes.view(len(rows), -1, 4)
            label = preds.labels[rows] if boxes.shape[1] > 1 else torch.zeros_like(roi)
            rois[rows, 0] = float(i)
            rois[rows, 1:] = boxes[torch.arange(len(rows), device=roi.device), label]
        return rois

    def detection_feats(self, fwd, rois: torch.Tensor) -> torch.Tensor:
        """(n, C, s, s) the :attr:`detection_branch`'s features at ``rois``, read as the RoI
        head reads them (its extractor's levels, then its shared head)."""
        head = self.roi_head
        extractor = getattr(head, self.detection_branch[0])
        feats = extractor(fwd.levels[:extractor.num_inputs], rois)
        return head.shared_head(feats) if head.with_shared_head else feats

    def prediction_reads(self, fwd, preds, target: str) -> list:
        """The reads of A made at each prediction's own box, beyond the forward's RoI reads:
        [(feats (n, C, s, s) leaves, rois (n, 5))], the :attr:`detection_branch`'s when
        ``target`` reads it (also set on ``preds`` as ``detection_feats``), else none."""
        if self.detection_branch is None or target not in self.detection_branch[1]:
            return []
        with torch.no_grad():
            rois = self.detection_rois(fwd, preds)
            preds.detection_feats = self.detection_feats(fwd, rois).requires_grad_(True)
        return [(preds.detection_feats, rois)]

    def leaf_attribute(self, target, fwd, preds):
        preds = preds.clone()
        reads = self.prediction_reads(fwd, preds, target) if len(preds) else []
        with torch.enable_grad():
            y = self.attribute(target, fwd, preds)
        rows = preds.roi if fwd.features == 'roi' else preds.img
        if not reads:
            return y, fwd.feats, rows
        own = torch.arange(len(preds), device=rows.device)  # (a read per prediction)
        return (y, list(fwd.feats) + [feats for feats, _ in reads],
                [rows] * len(fwd.feats) + [own] * len(reads))

    def boxes(self, bbox_pred: torch.Tensor, rois: torch.Tensor, labels: torch.Tensor,
              bbox_head=None, max_shape=None) -> torch.Tensor:
        """(n, 4) x1y1x2y2 boxes (input pixels; clipped to ``max_shape`` (h, w) if given)
        decoded by ``bbox_head`` (default: the last stage's) from the deltas of each RoI's
        class (bbox_pred (n, 4 K) or class-agnostic (n, 4); SABL's (bucket scores, offsets);
        rois (n, 4))."""
        bbox_head = self.bbox_head if bbox_head is None else bbox_head
        if isinstance(bbox_pred, tuple):  # SABL: class-agnostic buckets
            return bbox_head.bbox_coder.decode(rois, bbox_pred, max_shape=max_shape)[0]
        if not bbox_head.reg_class_agnostic:
            idx = labels[:, None] * 4 + torch.arange(4, device=labels.device)
            bbox_pred = bbox_pred.gather(1, idx)
        return bbox_head.bbox_coder.decode(rois, bbox_pred, max_shape=max_shape)

    def heatmaps(self, fwd, dets, settings) -> None:
        (fpn_heatmaps if fwd.features == 'fpn' else roi_heatmaps)(self, fwd, dets, settings)

    # --------------------------------------------------------------- Odam-Train
    def train_positives(self, step: RoITrainStep) -> InstanceData:
        """The sampler's positive RoIs of one stage: ``roi`` (index into the stage's RoIs),
        ``img``, ``labels`` (assigned class), ``gt_index`` (``pos_assigned_gt_inds``),
        ``rois`` (x1y1x2y2 input pixels) and ``ious`` of their predicted boxes with their GT
        boxes."""
        sampling_results = step.sampling_results
        bbox_head = self.stage_parts('bbox_head')[step.stage or 0]
        rois = bbox2roi([res.priors for res in sampling_results])
        # the sampler puts each image's positives first among its RoIs
        starts = torch.tensor([0] + [len(res.priors) for res in sampling_results]).cumsum(0)
        pos = torch.cat([torch.arange(len(res.pos_inds)) + int(start)
                         for res, start in zip(sampling_results, starts)]).to(rois.device)
        labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        gt_boxes = torch.cat([res.pos_gt_bboxes for res in sampling_results])
        with torch.no_grad():
            boxes = self.boxes(take_rows(step.bbox_results['bbox_pred'], pos), rois[pos, 1:],
                               labels, bbox_head)
            ious = bbox_overlaps(boxes, gt_boxes, is_aligned=True)
        return InstanceData(
            roi=pos, img=rois[pos, 0].long(), labels=labels, rois=rois[pos, 1:], ious=ious,
            gt_index=torch.cat([res.pos_assigned_gt_inds for res in sampling_results]))

    def train_maps(self, step: RoITrainStep, positives, grid_hw, map_stride, second_order):
        """A = the RoI features of the stage (one backward for all), each map pasted into its
        RoI."""
        return roi_positive_maps(step.bbox_results, positives, grid_hw, map_stride,
                                 second_order)


class MaskScoringRoIAdapter(StandardRoIAdapter):
    """MS R-CNN (``MaskScoringRoIHead``): mmdet rescores each detection after NMS, its score
    = the box head's class probability x the mask IoU head's prediction for that class,
    read from the mask features at the detection's box (input pixels, clipped) and its mask.
    Y 'score' is that product, A = the RoI features the box head reads and the mask
    features read at the prediction's box (one leaf per prediction), each map pasted where
    it was read. Logits and box sides are Faster R-CNN's; the candidates (Odam-NMS, the
    'candidates' evidence) keep the box head's scores, as mmdet's NMS sees them."""
    head_type = MaskScoringRoIHead
    features = ('auto', 'roi')
    detection_branch = ('mask_roi_extractor', ('score',))
    reproduces = (_TWO_STAGE, _BOX_HEAD,
                  Same('head', (BaseRoIHead.predict, StandardRoIHead.predict_bbox,
                                StandardRoIHead._bbox_forward, StandardRoIHead._mask_forward,
                                MaskScoringRoIHead.predict_mask)),
                  Same('mask_iou_head', (MaskIoUHead.predict_by_feat,)))

    def parts(self) -> dict:
        return dict(super().parts(), mask_iou_head=[self.roi_head.mask_iou_head])

    def mask_iou(self, fwd, preds, mask_feats: torch.Tensor | None = None) -> torch.Tensor:
        """(n,) the mask IoU head's prediction of each prediction's class, from its mask
        features (read at :meth:`detection_rois` when None) and its mask."""
        if mask_feats is None:
            mask_feats = self.detection_feats(fwd, self.detection_rois(fwd, preds).detach())
        head, n = self.roi_head, torch.arange(len(preds), device=preds.labels.device)
        mask_preds = head.mask_head(mask_feats)
        iou = head.mask_iou_head(mask_feats, mask_preds[n, preds.labels])
        return iou[n, preds.labels]

    def predictions(self, fwd, cfg=None) -> list:
        """Faster R-CNN's detections, rescored by the mask IoU (``MaskIoUHead``)."""
        dets = super().predictions(fwd, cfg)
        with torch.no_grad():
            for det in dets:
                if len(det):
                    det.scores = det.scores * self.mask_iou(fwd, det)
        return dets

    def attribute(self, target, fwd, preds):
        y = super().attribute(target, fwd, preds)
        if target != 'score':
            return y
        return y * self.mask_iou(fwd, preds, preds.get('detection_feats', None))


class GridRoIAdapter(StandardRoIAdapter):
    """Grid R-CNN (``GridRoIHead``): its box head classifies the proposals (no regression);
    after NMS the grid head reads the features at each detection's box and places its box
    sides at the score-weighted grid points of its heat maps (mmdet's
    ``GridHead._predict_by_feat_single``, run with the graph). Y 'score' / 'logit': the box
    head's (A = its RoI read); box sides: the grid's (A = the grid features read at the
    detection's box, one leaf per prediction, pasted there). Odam-NMS would skip the grid's
    refinement of what NMS keeps: refused; so is Odam-Train."""
    head_type = GridRoIHead
    features = ('auto', 'roi')
    detection_branch = ('grid_roi_extractor', BOX_SIDES)
    reproduces = (_TWO_STAGE, _BOX_HEAD,
                  Same('head', (BaseRoIHead.predict, GridRoIHead.predict_bbox,
                                StandardRoIHead._bbox_forward, StandardRoIHead.predict_mask)),
                  Same('grid_head', (GridHead.forward, GridHead.predict_by_feat,
                                     GridHead._predict_by_feat_single)))

    def parts(self) -> dict:
        return dict(super().parts(), grid_head=[self.roi_head.grid_head])

    def nms_support(self):
        return 'its grid head refines the boxes that NMS keeps'

    def train_support(self):
        return 'its boxes come from the grid head, whose targets Odam-Train does not know'

    def grid_boxes(self, fwd, preds, grid_feats: torch.Tensor | None = None) -> torch.Tensor:
        """(n, 4) x1y1x2y2 original pixels: mmdet's grid boxes of the predictions, from
        their grid features (read at :meth:`detection_rois` when None)."""
        grid_head = self.roi_head.grid_head
        rois = self.detection_rois(fwd, preds)
        if grid_feats is None:
            grid_feats = self.detection_feats(fwd, rois.detach())
        grid_head.test_mode = True  # (as mmdet's predict_bbox sets it)
        fused = grid_head(grid_feats)['fused']
        boxes = rois.new_zeros(len(preds), 4)
        for i, meta in enumerate(fwd.metas):
            rows = (preds.img == i).nonzero()[:, 0]
            if len(rows):
                boxes[rows] = grid_head._predict_by_feat_single(fused[rows], rois[rows, 1:],
                                                                meta, rescale=True)
        return boxes

    def predictions(self, fwd, cfg=None) -> list:
        """The box head's detections, their boxes replaced by the grid's."""
        dets = super().predictions(fwd, cfg)
        with torch.no_grad():
            for det in dets:
                if len(det):
                    det.bboxes = self.grid_boxes(fwd, det)
        return dets

    def attribute(self, target, fwd, preds):
        if target not in BOX_SIDES:
            return super().attribute(target, fwd, preds)
        boxes = self.grid_boxes(fwd, preds, preds.get('detection_feats', None))
        return boxes[:, BOX_SIDES.index(target)]


class CrowdDetRoIAdapter(StandardRoIAdapter):
    """CrowdDet (``MultiInstanceRoIHead`` with ``MultiInstanceBBoxHead``): each RoI predicts
    ``num_instance`` boxes (the crowd's "multiple instance prediction"), each with its own
    class and box branch (after the refine module when the head has one), kept by mmdet's
    set NMS (two predictions of one RoI never suppress each other). A = the RoI features
    its box head reads, shared by the RoI's instances; Y of instance k = its own output
    (score: mmdet's, the softmax's column 1; box sides decoded from its own deltas).
    Provenance adds ``instance``. Odam-NMS and Odam-Train are not defined for it (set NMS
    is its own crowd method; its loss matches instance sets)."""
    head_type = MultiInstanceRoIHead
    features = ('auto', 'roi')
    reproduces = (_TWO_STAGE,
                  Same('bbox_head', (BBoxHead.predict_by_feat,
                                     MultiInstanceBBoxHead._predict_by_feat_single,
                                     MultiInstanceBBoxHead.set_nms)),
                  Same('head', (BaseRoIHead.predict, MultiInstanceRoIHead.predict_bbox,
                                MultiInstanceRoIHead._bbox_forward)))

    def _bbox_forward(self, stage, levels, rois, context):
        out = self.roi_head._bbox_forward(levels, rois)
        if 'cls_score_ref' in out:  # mmdet predicts from the refine module's outputs
            return dict(cls_score=out['cls_score_ref'], bbox_pred=out['bbox_pred_ref'])
        return out

    @property
    def num_instance(self) -> int:
        return self.bbox_head.num_instance

    def _rows(self, fwd, sl, meta, score_thr, max_num):
        """mmdet's per-row decoding of one image (row = RoI x num_instance + instance) and
        its set NMS (``score_thr`` None: none), with each kept row's index."""
        per_row = self._per_roi(fwd, sl, meta)
        rows = torch.arange(len(per_row.bboxes), device=per_row.bboxes.device)
        boxes, scores = per_row.bboxes, per_row.scores[:, 1]
        if score_thr is not None:
            # the row rides along; set_nms reads the last column as the RoI (float64, as
            # mmdet's numpy RoI column makes its boxes)
            ext = torch.cat([boxes.double(), rows[:, None].double(),
                             (rows // self.num_instance)[:, None].double()], 1)
            ext, scores = self.bbox_head.set_nms(ext, scores, score_thr,
                                                 self.test_cfg.nms['iou_threshold'], max_num)
            boxes, rows = ext[:, :4].to(per_row.bboxes.dtype), ext[:, 4].long()
        return InstanceData(bboxes=boxes, scores=scores, labels=torch.zeros_like(rows),
                            roi=rows // self.num_instance + sl.start,
                            instance=rows % self.num_instance)

    def _image_rows(self, fwd, score_thr, max_num) -> list:
        dets = []
        for i, (sl, meta) in enumerate(zip(self._slices(fwd), fwd.metas)):
            det = self._rows(fwd, sl, meta, score_thr, max_num)
            det.img = torch.full_like(det.labels, i)
            dets.append(det)
        return dets

    def predictions(self, fwd, cfg=None) -> list:
        """mmdet's decoding and set NMS (labels 0: the one class; mmdet gives them as
        floats)."""
        cfg = self.test_cfg if cfg is None else cfg
        return self._image_rows(fwd, cfg.score_thr, cfg.max_per_img)

    def candidates(self, fwd, score_thr=None) -> list:
        score_thr = self.test_cfg.score_thr if score_thr is None else score_thr
        return [d[d.scores > score_thr] for d in self._image_rows(fwd, None, -1)]

    def every_prediction(self, fwd) -> list:
        return self._image_rows(fwd, None, -1)

    def nms_support(self):
        return 'its set NMS keeps the instances of one RoI together (CrowdDet\'s own method)'

    def train_support(self):
        return 'its loss matches each RoI\'s instance set to GT (EMD loss), no positives'

    def attribute(self, target, fwd, preds):
        """Instance ``preds.instance`` of RoI ``preds.roi``: 'score' softmax column 1 (as
        mmdet scores), 'logit' that column's logit, box sides from its deltas."""
        n = torch.arange(len(preds), device=preds.roi.device)
        k = self.num_instance
        if target in ('score', 'logit'):
            logits = fwd.cls_score[preds.roi].view(len(preds), k, -1)[n, preds.instance]
            return (logits.softmax(-1) if target == 'score' else logits)[:, 1]
        if target in BOX_SIDES:
            deltas = fwd.bbox_pred[preds.roi].view(len(preds), k, 4)[n, preds.instance]
            boxes = self.bbox_head.bbox_coder.decode(fwd.box_rois[preds.roi, 1:], deltas)
            i = BOX_SIDES.index(target)
            return boxes[:, i] / scales(fwd.metas, boxes)[preds.img, i % 2]
        raise ValueError(f"target must be 'score', 'logit' or one of {BOX_SIDES}, "
                         f'got {target!r}')


class CascadeRoIAdapter(StandardRoIAdapter):
    """``CascadeRoIHead`` (Cascade R-CNN): A = the RoI features of every stage. Y reads
    all of them (mmdet's score is the softmax of the stages' mean class logit; its box is
    the last stage's regression of RoIs the earlier stages refined), so a map is the sum of
    the stages' maps, each pasted into the RoI that stage pooled."""
    head_type = CascadeRoIHead
    features = ('auto', 'roi')
    reproduces = (_TWO_STAGE, _BOX_HEAD,
                  Same('bbox_head', (BBoxHead.regress_by_class,)),
                  Same('head', (BaseRoIHead.predict, CascadeRoIHead.predict_bbox,
                                CascadeRoIHead._bbox_forward, CascadeRoIHead._refine_roi,
                                CascadeRoIHead.predict_mask)))

    @property
    def bbox_head(self):
        return self.roi_head.bbox_head[-1]

    @property
    def extractor(self):
        return self.roi_head.bbox_roi_extractor[-1]

    def _bbox_forward(self, stage, levels, rois, context):
        return self.roi_head._bbox_forward(stage, levels, rois, **context)

    def forward_rois(self, feats, proposals, metas, features='roi',
                     context=None) -> RoIForward:
        """mmdet's ``_refine_roi`` with each stage's RoI features as leaves."""
        head = self.roi_head
        counts = [len(p) for p in proposals]
        rois = bbox2roi([p.bboxes for p in proposals])
        all_rois, all_feats, scores = [], [], []
        with torch.enable_grad():
            levels = [f.detach() for f in feats]
            if context is None:
                with torch.no_grad():
                    context = self.roi_context(levels)
            for stage in range(head.num_stages):
                reads, cls_score, bbox_pred = self._stage_forward(stage, levels, rois,
                                                                  features, context)
                all_rois += self.read_rois(stage, rois)
                all_feats += reads
                scores.append(cls_score)
                if stage < head.num_stages - 1:
                    rois = self._refine(stage, rois, cls_score, bbox_pred, counts, metas)
            mean_score = sum(scores) / len(scores)
        return RoIForward(all_feats, metas, all_rois, all_feats, mean_score, bbox_pred,
                          counts, levels, features, all_rois[-1])

    def _refine(self, stage, rois, cls_score, bbox_pred, counts, metas):
        """The next stage's RoIs as mmdet's ``_refine_roi`` makes them (with the graph of
        the regression: the final box depends on it)."""
        bbox_head = self.roi_head.bbox_head[stage]
        if bbox_head.custom_activation:
            cls_score = bbox_head.loss_cls.get_activation(cls_score)
        refined = []
        deltas = (bbox_pred.split(counts) if torch.is_tensor(bbox_pred)
                  else bbox_head.bbox_pred_split(bbox_pred, counts))  # (SABL: a pair)
        for r, s, d, meta in zip(rois.split(counts), cls_score.split(counts), deltas, metas):
            if len(r):
                boxes = get_box_tensor(bbox_head.regress_by_class(r[:, 1:], s[:, :-1].argmax(1),
                                                                  d, meta))
                refined.append(torch.cat([r[:, [0]], boxes], 1))
        return torch.cat(refined) if refined else rois


class DoubleHeadRoIAdapter(StandardRoIAdapter):
    """Double-Head R-CNN (``DoubleHeadRoIHead`` with ``DoubleConvFCBBoxHead``): the class
    reads the RoI's features, the box its features in the RoI enlarged by
    ``reg_roi_scale_factor`` (two RoIAlign reads of the same levels). A = both reads, each a
    leaf; a map is the sum of their maps, each pasted into the box it was read from (the
    score's map is the class read's, a box side's the enlarged read's)."""
    head_type = DoubleHeadRoIHead
    features = ('auto', 'roi')
    reproduces = (_TWO_STAGE, _BOX_HEAD,
                  Same('head', (BaseRoIHead.predict, StandardRoIHead.predict_bbox,
                                DoubleHeadRoIHead._bbox_forward, StandardRoIHead.predict_mask)))

    def read_rois(self, stage, rois):
        return [rois, self.extractor.roi_rescale(rois, self.roi_head.reg_roi_scale_factor)]


class HTCRoIAdapter(CascadeRoIAdapter):
    """HTC (``HybridTaskCascadeRoIHead``): a cascade whose box heads read the RoI features
    plus, with a semantic head, its semantic features pooled in the same RoI. A = each
    stage's fused RoI features (what the box head reads), pasted into the stage's RoI; the
    semantic features come from the levels as mmdet's ``predict`` computes them."""
    head_type = HybridTaskCascadeRoIHead
    reproduces = (_TWO_STAGE, _BOX_HEAD,
                  Same('bbox_head', (BBoxHead.regress_by_class,)),
                  Same('head', (HybridTaskCascadeRoIHead.predict, CascadeRoIHead.predict_bbox,
                                HybridTaskCascadeRoIHead._bbox_forward,
                                CascadeRoIHead._refine_roi,
                                HybridTaskCascadeRoIHead.predict_mask)))

    def roi_context(self, levels):
        head = self.roi_head
        return dict(semantic_feat=head.semantic_head(levels)[1] if head.with_semantic
                    else None)

    def train_support(self):
        return (f'{type(self.roi_head).__name__}._bbox_forward does not return the RoI '
                'features (bbox_feats) that the training maps read')


class SCNetRoIAdapter(HTCRoIAdapter):
    """SCNet (``SCNetRoIHead``): as HTC, the box heads' input also adds the image's global
    context vector (A = the fused RoI features)."""
    head_type = SCNetRoIHead
    reproduces = (_TWO_STAGE, _BOX_HEAD,
                  Same('bbox_head', (BBoxHead.regress_by_class,)),
                  Same('head', (SCNetRoIHead.predict, CascadeRoIHead.predict_bbox,
                                SCNetRoIHead._bbox_forward, SCNetRoIHead._fuse_glbctx,
                                CascadeRoIHead._refine_roi, SCNetRoIHead.predict_mask)))

    def roi_context(self, levels):
        head = self.roi_head
        return dict(super().roi_context(levels),
                    glbctx_feat=head.glbctx_head(levels)[1] if head.with_glbctx else None)


class _SABLBoxes:
    """SABL's box head (``SABLHead``): class-agnostic boxes from bucket scores and offsets
    (``BucketingBBoxCoder``), and mmdet's NMS scores the class probability times the
    buckets' localisation confidence, which :meth:`score_factors` gives with the graph."""
    box_head_type = SABLHead

    def score_factors(self, fwd, roi):
        return self.bbox_head.bbox_coder.decode(fwd.box_rois[roi, 1:],
                                                take_rows(fwd.bbox_pred, roi))[1]


_SABL_BOX_HEAD = Same('bbox_head', (BBoxHead.predict_by_feat, SABLHead._predict_by_feat_single))


class SABLRoIAdapter(_SABLBoxes, StandardRoIAdapter):
    """SABL Faster R-CNN (``StandardRoIHead`` with ``SABLHead``): Faster R-CNN's A; Y
    'score' = the class probability x the localisation confidence (mmdet's NMS score),
    box sides from the chosen buckets' offsets."""
    reproduces = (_TWO_STAGE, _SABL_BOX_HEAD) + StandardRoIAdapter.reproduces[2:]


class SABLCascadeRoIAdapter(_SABLBoxes, CascadeRoIAdapter):
    """SABL Cascade R-CNN (``CascadeRoIHead`` with ``SABLHead`` stages): Cascade R-CNN's A,
    SABL's score and boxes (last stage), SABL's ``regress_by_class`` between stages."""
    reproduces = (_TWO_STAGE, _SABL_BOX_HEAD,
                  Same('bbox_head', (SABLHead.regress_by_class, SABLHead.bbox_pred_split)),
                  CascadeRoIAdapter.reproduces[-1])


# build_adapter takes the head's most specific class here (then the most specific box head)
ROI_ADAPTERS = (SCNetRoIAdapter, HTCRoIAdapter, SABLCascadeRoIAdapter, CascadeRoIAdapter,
                DoubleHeadRoIAdapter, MaskScoringRoIAdapter, GridRoIAdapter, CrowdDetRoIAdapter,
                SABLRoIAdapter, StandardRoIAdapter)
