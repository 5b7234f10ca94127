"""Adapters of mmdet's one-stage dense heads: the only code that knows their internals.

Shapes: B images, L levels, n predictions, K classes (K + 1 for softmax heads), A priors per
location, E box-regression channels per prior.

A prediction's provenance: ``img``, ``level``, ``prior`` (mmdet's flat prior index on that
level: ``(y * w + x) * A + a``) and ``labels``. Detections and candidates come from mmdet's
own post-processing (``head.predict_by_feat``), which the adapter runs while recording where
each candidate came from (:meth:`DenseHeadAdapter.provenance`): mmdet's detections,
exactly, with their provenance. The explained attribute Y is recomputed from the head's
outputs at the provenance (:meth:`DenseHeadAdapter.attribute`): mmdet's score formula for
that head, the class logit, or a side of mmdet's decoded box (not clipped to the image, so
that border boxes keep their gradient), in original-image pixels.
"""
from __future__ import annotations

import contextlib
import sys
from typing import NamedTuple

import torch
from mmdet.models.dense_heads import (
    ATSSHead,
    AutoAssignHead,
    CenterNetHead,
    CondInstBboxHead,
    CondInstMaskHead,
    FCOSHead,
    FoveaHead,
    GFLHead,
    PAAHead,
    RepPointsHead,
    RetinaHead,
    RTMDetHead,
    RTMDetInsHead,
    RTMDetInsSepBNHead,
    RTMDetSepBNHead,
    SABLRetinaHead,
    TOODHead,
    YOLOV3Head,
    YOLOXHead,
)
from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from mmdet.models.detectors import SingleStageDetector
from mmdet.models.detectors.single_stage_instance_seg import SingleStageInstanceSegmentor
from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.models.task_modules.prior_generators import anchor_inside_flags
from mmdet.models.utils import sigmoid_geometric_mean
from mmdet.structures.bbox import bbox_overlaps
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

from odamtrain.inference import image_window

from ..conv_towers import ConvAct, tower_support
from ..dense_gradients import (
    DenseForward,
    dense_forward,
    dense_heatmaps,
    dense_train_maps,
)
from ..protocol import (
    BOX_SIDES,
    DetectorAdapter,
    Same,
    UnsupportedDetectorError,
    instance_override,
    resolved,
    scales,
)

__all__ = ['DenseRows', 'DenseTrainStep', 'DenseHeadAdapter', 'RetinaAdapter', 'ATSSAdapter',
           'GFLAdapter', 'PAAAdapter', 'FCOSAdapter', 'CondInstAdapter', 'AutoAssignAdapter',
           'FoveaAdapter', 'TOODAdapter', 'RTMDetAdapter', 'RTMDetInsAdapter',
           'CenterNetAdapter', 'RepPointsAdapter', 'YOLOXAdapter', 'YOLOv3Adapter',
           'SABLRetinaAdapter', 'DENSE_ADAPTERS']


def selection(*head_methods) -> tuple:
    """The gate of a dense family whose test-time selection is ``head_methods``: mmdet's
    one-stage ``predict`` (``extract_feat``, then ``bbox_head.predict``) and these."""
    return (Same('detector', (SingleStageDetector.predict, SingleStageDetector.extract_feat)),
            Same('head', (BaseDenseHead.predict, *head_methods)))


class DenseTrainStep(NamedTuple):
    """A dense head's training step as Odam-Train reads it: the forward, what
    :meth:`DenseHeadAdapter.recording_positives` recorded in its ``loss_by_feat``, the GT
    instances and metainfo of the batch."""
    fwd: DenseForward
    recorded: object
    batch_gt_instances: list
    metas: list


class DenseRows(NamedTuple):
    """The head's outputs at n predictions: ``cls`` (n, K), ``reg`` (n, E), ``factor`` (n,)
    (the score-factor logit: centerness, objectness) or None."""
    cls: torch.Tensor
    reg: torch.Tensor
    factor: torch.Tensor | None


class DenseHeadAdapter(DetectorAdapter):
    """A one-stage detector (``SingleStageDetector.predict``) whose head's test-time
    selection is mmdet's ``BaseDenseHead`` ``predict_by_feat`` -> ``_predict_by_feat_single``
    (score threshold and ``nms_pre`` top-k per level through ``filter_scores_and_topk``) ->
    ``_bbox_post_process``, or a family's override of ``_predict_by_feat_single`` of the
    same shape (:attr:`reproduces`). A = the FPN level of each prediction. Without
    :meth:`towers` only ``exact`` mode applies.

    Subclasses know one family: its score formula (:meth:`score`), decoding
    (:meth:`decode`), and for ``fast`` mode its towers and final layers.
    """
    head_type = BaseDenseHead
    reproduces = selection(BaseDenseHead.predict_by_feat, BaseDenseHead._predict_by_feat_single,
                           BaseDenseHead._bbox_post_process)
    features = ('auto', 'fpn', 'towers')
    forward_impl = None  # (staticmethod) the forward whose final layers final_layers() copies
    post_process_name = '_bbox_post_process'  # what _predict_by_feat_single ends with
    rescale_in_head = True  # the head's predict_by_feat rescales the boxes (rescale=True)
    final_radius = 1  # half-width of the final convs

    def __init__(self, head, model=None):
        super().__init__(head, model)
        self._priors = {}  # the last levels' priors

    @property
    def test_cfg(self):
        return self.head.test_cfg

    def mode_fallback(self):
        return self.fast_support()

    def check_features(self, features: str) -> str:
        features = super().check_features(features)
        reason = self.fast_support() if features == 'towers' else None
        if reason is not None:
            raise ValueError(f"{self.name}: features='towers' needs the head's conv towers "
                             f'in window form; {reason}')
        return features

    def forward(self, inputs, data_samples, features='auto') -> DenseForward:
        """The neck's levels (A) and the head's outputs (towers recorded)."""
        self.check_features(features)
        with torch.no_grad():
            return self.forward_features(self.model.extract_feat(inputs),
                                         [s.metainfo for s in data_samples])

    def forward_features(self, feats, metas: list) -> DenseForward:
        """The head on the neck's levels ``feats`` (its inputs), under the caller's grad
        mode."""
        return dense_forward(self, feats, metas)

    def heatmaps(self, fwd, dets, settings) -> None:
        dense_heatmaps(self, fwd, dets, settings)

    # ------------------------------------------------------------------ outputs
    def split(self, outputs) -> tuple:
        """(cls, reg, factor) per-level lists of the head's ``forward`` outputs."""
        return outputs[0], outputs[1], outputs[2] if len(outputs) > 2 else None

    @property
    def prior_generator(self):
        """The generator of the priors the head decodes from."""
        return self.head.prior_generator

    @property
    def num_levels(self) -> int:
        return self.prior_generator.num_levels

    def num_priors(self, level: int) -> int:
        return self.prior_generator.num_base_priors[level]

    def priors(self, sizes, like: torch.Tensor) -> list:
        """Per level (h * w * A, P) priors, as the head's ``predict_by_feat`` makes them."""
        return self.prior_generator.grid_priors(sizes, dtype=like.dtype, device=like.device)

    def prior_coords(self, fwd: DenseForward, preds: InstanceData) -> torch.Tensor:
        """(n, P) the prior of each prediction (``level``, ``prior``) on the forward's
        levels."""
        feats = fwd.feats
        key = (tuple(tuple(f.shape[-2:]) for f in feats), feats[0].dtype, feats[0].device)
        if key not in self._priors:
            self._priors = {key: self.priors([f.shape[-2:] for f in feats], feats[0])}
        priors = self._priors[key]
        out = feats[0].new_zeros(len(preds), priors[0].shape[-1])
        for level in preds.level.unique().tolist():
            idx = (preds.level == level).nonzero()[:, 0]
            out[idx] = priors[level][preds.prior[idx]].to(out)
        return out

    # -------------------------------------------------------------- predictions
    @contextlib.contextmanager
    def provenance(self):
        """Inside, the head's post-processing attaches ``level`` and ``prior`` to its
        candidates: ``filter_scores_and_topk`` (as the module of ``_predict_by_feat_single``
        calls it, once per level) is recorded, and ``_bbox_post_process`` receives the
        recorded indices as fields, which mmdet's indexing then carries through size
        filtering and NMS."""
        head = self.head
        module = sys.modules[type(head)._predict_by_feat_single.__module__]
        original = module.filter_scores_and_topk
        kept = []

        def recording(scores, score_thr, topk, results=None):
            out = original(scores, score_thr, topk, results)
            kept.append(out[2])  # prior index of each kept (prior, class) of this level
            return out

        def post_process(results, *args, **kwargs):
            if sum(len(k) for k in kept) != len(results):
                raise RuntimeError(f'{type(head).__name__}: recorded {len(kept)} levels of '
                                   f'candidates that do not match its {len(results)}')
            results.level = torch.cat([torch.full_like(k, level) for level, k in
                                       enumerate(kept)])
            results.prior = torch.cat(kept)
            kept.clear()
            return self.post_process(results, *args, **kwargs)

        module.filter_scores_and_topk = recording
        setattr(head, self.post_process_name, post_process)
        try:
            yield
        finally:
            module.filter_scores_and_topk = original
            delattr(head, self.post_process_name)

    def post_process(self, results: InstanceData, *args, **kwargs) -> InstanceData:
        """The head's own post-processing (:attr:`post_process_name`) of one image's
        candidates."""
        return getattr(type(self.head), self.post_process_name)(self.head, results, *args,
                                                                **kwargs)

    @contextlib.contextmanager
    def recorded_inputs(self):
        """Inside, the head's ``predict_by_feat`` records the outputs and the test config it
        is given (``outputs``, ``cfg``; ``img``: 0, for the caller to count images) before
        running as usual (mmdet and the adapters pass all but the outputs by keyword).
        Yields that dict."""
        head, state = self.head, {}
        original = type(head).predict_by_feat

        def predict_by_feat(*outputs, cfg=None, **kwargs):
            state.update(outputs=outputs, cfg=head.test_cfg if cfg is None else cfg, img=0)
            return original(head, *outputs, cfg=cfg, **kwargs)

        with instance_override(head, 'predict_by_feat', predict_by_feat):
            yield state

    def predictions(self, fwd, cfg=None, with_nms: bool = True) -> list:
        """mmdet's ``predict_by_feat`` of a forward (``outputs``, ``metas``; boxes in
        original pixels) with provenance: per image an InstanceData with ``bboxes``,
        ``scores``, ``labels``, ``level``, ``prior``, ``img``. ``cfg`` replaces the head's
        ``test_cfg``; without NMS these are the candidates that reach it."""
        with torch.no_grad(), self.provenance():
            results = self.head.predict_by_feat(*fwd.outputs, batch_img_metas=fwd.metas,
                                                cfg=cfg, rescale=self.rescale_in_head,
                                                with_nms=with_nms)
        for i, (res, meta) in enumerate(zip(results, fwd.metas)):
            res.img = torch.full_like(res.labels, i)
            if not self.rescale_in_head:  # as the detector rescales the head's boxes
                res.bboxes = res.bboxes / res.bboxes.new_tensor(meta['scale_factor']).repeat(2)
        return results

    def candidates(self, fwd) -> list:
        """After score threshold, ``nms_pre`` and the score factors: what reaches NMS."""
        return self.predictions(fwd, with_nms=False)

    def every_prediction(self, fwd) -> list:
        """Every (prior, class) of every location, no threshold, top-k or NMS (to find the
        prediction that explains a target best), with provenance."""
        cls = self.split(fwd.outputs)[0]
        cfg = ConfigDict(self.head.test_cfg or {})
        cfg.update(score_thr=-1.0, nms_pre=sum(c[0].numel() for c in cls) + 1,
                   min_bbox_size=-1)
        return self.predictions(fwd, cfg, with_nms=False)

    # ---------------------------------------------------------------- attribute
    def location(self, level: int, prior: torch.Tensor, hw) -> tuple:
        """(ys, xs, anchor) of flat prior indices on a level of size ``hw``."""
        a = self.num_priors(level)
        loc = prior // a
        return loc // hw[1], loc % hw[1], prior % a

    def rows(self, outputs, preds: InstanceData) -> DenseRows:
        """The head outputs (with their graph) at the predictions (``img``, ``level``,
        ``prior``)."""
        parts = [[], [], []]
        order = []
        for level in preds.level.unique().tolist():
            idx = (preds.level == level).nonzero()[:, 0]
            order.append(idx)
            for k, maps in enumerate(self.split(outputs)):
                if maps is None:
                    continue
                m = maps[level]  # [B, A * X, h, w]
                b, ax, h, w = m.shape
                a = self.num_priors(level)
                flat = m.permute(0, 2, 3, 1).reshape(b, h * w * a, ax // a)
                parts[k].append(flat[preds.img[idx], preds.prior[idx]])
        if not order:
            return self._empty_rows(outputs)
        inverse = torch.argsort(torch.cat(order))
        cls, reg, factor = (torch.cat(p)[inverse] if p else None for p in parts)
        return DenseRows(cls, reg, None if factor is None else factor[:, 0])

    def _empty_rows(self, outputs) -> DenseRows:
        cls, reg, factor = self.split(outputs)
        a = self.num_priors(0)
        return DenseRows(cls[0].new_zeros(0, cls[0].shape[1] // a),
                         reg[0].new_zeros(0, reg[0].shape[1] // a),
                         None if factor is None else factor[0].new_zeros(0))

    def attribute(self, target, fwd, preds):
        scale = scales(fwd.metas, fwd.feats[0])[preds.img]
        return self.attribute_of_rows(target, self.rows(fwd.outputs, preds), preds,
                                      self.prior_coords(fwd, preds), scale)

    def leaf_attribute(self, target, fwd, preds):
        with torch.enable_grad():
            leaves = [f.detach().requires_grad_(True) for f in fwd.feats]
            outputs = self.head(leaves)
            y = self.attribute_of_rows(target, self.rows(outputs, preds), preds,
                                       self.prior_coords(fwd, preds),
                                       scales(fwd.metas, leaves[0])[preds.img])
        return y, leaves, preds.img

    def attribute_of_rows(self, target: str, rows: DenseRows, preds: InstanceData,
                          prior_coords: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Y (n,) of the predictions from their head outputs ``rows``.

        Args:
            target: 'score' (:meth:`score`), 'logit' (the class logit) or a box side
                'x1' | 'y1' | 'x2' | 'y2' in original pixels (:meth:`decode`, not clipped).
            prior_coords: (n, P) each prediction's prior; scale: (n, 2) input / original
                (w, h) of its image.
        """
        if target == 'logit':
            return self.logit(rows, preds.labels)
        if target == 'score':
            return self.score(rows, preds.labels)
        if target in BOX_SIDES:
            self.check_target(target)
            i = BOX_SIDES.index(target)
            return self.decode(rows, preds, prior_coords)[:, i] / scale[:, i % 2]
        raise ValueError(f"target must be 'score', 'logit' or one of {BOX_SIDES}, "
                         f'got {target!r}')

    def logit(self, rows: DenseRows, labels: torch.Tensor) -> torch.Tensor:
        return rows.cls.gather(1, labels[:, None])[:, 0]

    def score(self, rows: DenseRows, labels: torch.Tensor) -> torch.Tensor:
        """mmdet's ``_predict_by_feat_single``: the class activation (sigmoid, softmax
        without background, or the loss's own), times the sigmoid of the score factor."""
        head = self.head
        if getattr(head.loss_cls, 'custom_cls_channels', False):
            probs = head.loss_cls.get_activation(rows.cls)
        elif head.use_sigmoid_cls:
            probs = rows.cls.sigmoid()
        else:
            probs = rows.cls.softmax(-1)[:, :-1]
        score = probs.gather(1, labels[:, None])[:, 0]
        return score * rows.factor.sigmoid() if rows.factor is not None else score

    def decode(self, rows: DenseRows, preds: InstanceData,
               prior_coords: torch.Tensor) -> torch.Tensor:
        """(n, 4) x1y1x2y2 boxes in input pixels, mmdet's decoding without clipping."""
        return self.head.bbox_coder.decode(prior_coords, rows.reg)

    def level_stride(self, fwd: DenseForward, level: int) -> float:
        """Input pixels per cell of a level of the forward."""
        return float(self.prior_generator.strides[level][0])

    def stride(self, level: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(n,) the stride of each prediction's ``level``."""
        strides = torch.tensor([s[0] for s in self.prior_generator.strides],
                               dtype=like.dtype, device=like.device)
        return strides[level]

    # --------------------------------------------------------------- Odam-Train
    def train_support(self) -> str | None:
        """None if :meth:`train_positives` knows this head's positives, else why not."""
        return f'{type(self).__name__} does not know the positives of {type(self.head).__name__}'

    @contextlib.contextmanager
    def recording_positives(self):
        """Inside, the head's ``loss_by_feat`` records what :meth:`train_positives` needs."""
        yield None

    def train_positives(self, step: DenseTrainStep) -> InstanceData:
        """Every positive of the batch as the head's own assignment made it: ``img``,
        ``level``, ``prior``, ``labels`` (assigned class), ``gt_index`` (into its image's
        GT), ``bboxes`` (predicted, input pixels, detached) and ``ious`` with its GT box."""
        raise UnsupportedDetectorError(self.train_support())

    def train_maps(self, step: DenseTrainStep, positives, grid_hw, map_stride, second_order):
        """'windows' gradients on each positive's FPN level (the paper's Phi), resampled to
        the grid; with the graph to the features (and the head with ``second_order``)."""
        return dense_train_maps(self, step.fwd, positives, grid_hw, map_stride, second_order)

    def _with_ious(self, fwd, pos: InstanceData, gt_bboxes: torch.Tensor) -> InstanceData:
        """``pos`` with its predicted ``bboxes`` (input pixels) and their ``ious`` with
        ``gt_bboxes`` (n, 4)."""
        with torch.no_grad():
            coords = self.prior_coords(fwd, pos)
            pos.bboxes = self.decode(self.rows(fwd.outputs, pos), pos, coords).detach()
            pos.ious = bbox_overlaps(pos.bboxes, gt_bboxes, is_aligned=True)
        return pos

    # ---------------------------------------------------------------- fast mode
    def towers(self, level: int):
        """The towers of a level, each a list of layers (``ConvModule`` or
        :class:`~odamtrain.explain.conv_towers.ConvAct`) between A and the final layers:
        (cls tower, reg tower), or a head's branches; None without conv towers."""
        head = self.head
        if not (hasattr(head, 'cls_convs') and hasattr(head, 'reg_convs')):
            return None
        return list(head.cls_convs), list(head.reg_convs)

    def fast_support(self) -> str | None:
        """None if ``fast`` mode applies, else the reason (logged; exact mode is used)."""
        if self.forward_impl is None:
            return f'{type(self).__name__} has no window form of the final layers'
        own = resolved(type(self.head), self.forward_impl.__name__)
        if own is not self.forward_impl:
            return (f'{type(self.head).__name__}.{self.forward_impl.__name__} is '
                    f'{own.__qualname__}, not {self.forward_impl.__qualname__}')
        for level in range(self.num_levels):
            towers = self.towers(level)
            if towers is None:
                return f'{type(self.head).__name__} has no cls / reg conv towers'
            reason = tower_support([m for tower in towers for m in tower])
            if reason is not None:
                return reason
        return None

    def final_layers(self, level: int, *tower_feats: torch.Tensor):
        """The head's final layers on (n, C, k, k) windows of the towers' outputs (one per
        tower of :meth:`towers`, k = 2 * :attr:`final_radius` + 1) -> raw outputs at the
        centres: ``(cls (n, A * K), reg (n, A * E), factor (n, A) or None)``, as the head's
        ``forward`` computes them."""
        raise NotImplementedError

    @staticmethod
    def centre(x: torch.Tensor) -> torch.Tensor:
        return x[:, :, x.shape[2] // 2, x.shape[3] // 2]

    def rows_at(self, level: int, raw, anchor: torch.Tensor) -> DenseRows:
        """:meth:`final_layers`' outputs at each prediction's anchor -> :class:`DenseRows`."""
        out = []
        for x in raw:
            if x is not None:
                x = x.reshape(len(x), self.num_priors(level), -1)
                x = x[torch.arange(len(x), device=x.device), anchor]
            out.append(x)
        cls, reg, factor = out
        return DenseRows(cls, reg, None if factor is None else factor[:, 0])


class SampledPositives:
    """Odam-Train positives of anchor heads whose targets come from their assigner and
    sampler (``_get_targets_single``: anchors inside the image, ``sampler.sample``): the
    sampler's ``pos_inds`` and ``pos_assigned_gt_inds``, recorded per image."""

    def train_support(self):
        return None

    @contextlib.contextmanager
    def recording_positives(self):
        sampler, results = self.head.sampler, []
        original = sampler.sample

        def sample(*args, **kwargs):
            results.append(original(*args, **kwargs))
            return results[-1]

        sampler.sample = sample
        try:
            yield results
        finally:
            del sampler.sample

    def train_positives(self, step):
        head, (fwd, recorded, _, metas) = self.head, step
        if len(recorded) != len(metas):
            raise RuntimeError(f'{type(head).__name__}: {len(recorded)} sampling results for '
                               f'{len(metas)} images')
        sizes = [f.shape[-2:] for f in fwd.feats]
        anchors, valid = head.get_anchors(sizes, metas, device=fwd.feats[0].device)
        parts, gt_boxes = [], []
        for img, (res, meta) in enumerate(zip(recorded, metas)):
            counts = [len(a) for a in anchors[img]]
            inside = anchor_inside_flags(torch.cat(anchors[img]), torch.cat(valid[img]),
                                         meta['img_shape'][:2],
                                         head.train_cfg['allowed_border']).nonzero()[:, 0]
            flat = inside[res.pos_inds]  # the sampler indexes the anchors inside the image
            starts = torch.tensor([0] + counts, device=flat.device).cumsum(0)
            level = torch.searchsorted(starts[1:], flat, right=True)
            parts.append(InstanceData(img=torch.full_like(flat, img), level=level,
                                      prior=flat - starts[level], labels=res.pos_gt_labels,
                                      gt_index=res.pos_assigned_gt_inds))
            gt_boxes.append(res.pos_gt_bboxes)
        return self._with_ious(fwd, InstanceData.cat(parts), torch.cat(gt_boxes))


class RetinaAdapter(SampledPositives, DenseHeadAdapter):
    """RetinaNet (and its subclasses that keep its forward): towers without norm."""
    head_type = RetinaHead
    forward_impl = staticmethod(RetinaHead.forward_single)

    def final_layers(self, level, cls_feat, reg_feat):
        head = self.head
        return self.centre(head.retina_cls(cls_feat)), self.centre(head.retina_reg(reg_feat)), \
            None


class SABLRetinaAdapter(DenseHeadAdapter):
    """SABL RetinaNet (``SABLRetinaHead``): RetinaNet's towers; one square anchor per
    location; class-agnostic boxes from bucket scores and offsets (``BucketingBBoxCoder``);
    mmdet's score = the class sigmoid x the buckets' localisation confidence (its NMS
    score factor). The head's outputs per prediction: ``reg`` = (bucket scores, bucket
    offsets) side by side."""
    head_type = SABLRetinaHead
    reproduces = selection(SABLRetinaHead.predict_by_feat, SABLRetinaHead._predict_by_feat_single,
                           BaseDenseHead._bbox_post_process)
    forward_impl = staticmethod(SABLRetinaHead.forward_single)

    @property
    def prior_generator(self):
        return self.head.square_anchor_generator

    def split(self, outputs):
        cls, bbox = outputs[0], outputs[1]
        return cls, [torch.cat(pair, 1) for pair in bbox], None

    def final_layers(self, level, cls_feat, reg_feat):
        head = self.head
        reg = torch.cat([head.retina_bbox_cls(reg_feat), head.retina_bbox_reg(reg_feat)], 1)
        return self.centre(head.retina_cls(cls_feat)), self.centre(reg), None

    def _decode(self, rows, prior_coords):
        """(boxes (n, 4) input pixels not clipped, localisation confidence (n,))."""
        half = rows.reg.shape[1] // 2
        return self.head.bbox_coder.decode(prior_coords, (rows.reg[:, :half].contiguous(),
                                                          rows.reg[:, half:].contiguous()))

    def decode(self, rows, preds, prior_coords):
        return self._decode(rows, prior_coords)[0]

    def score(self, rows, labels):
        """The class sigmoid x the localisation confidence (which reads the bucket scores
        only, not the anchors)."""
        confidence = self._decode(rows, rows.reg.new_zeros(len(rows.reg), 4))[1]
        return super().score(rows, labels) * confidence


class ATSSAdapter(SampledPositives, DenseHeadAdapter):
    """ATSS: GroupNorm towers, scaled regression, centerness as score factor."""
    head_type = ATSSHead
    forward_impl = staticmethod(ATSSHead.forward_single)

    def final_layers(self, level, cls_feat, reg_feat):
        head = self.head
        reg = head.scales[level](head.atss_reg(reg_feat)).float()
        return (self.centre(head.atss_cls(cls_feat)), self.centre(reg),
                self.centre(head.atss_centerness(reg_feat)))


class PAAAdapter(ATSSAdapter):
    """PAA: ATSS's towers; score sqrt(sigmoid(class) x sigmoid(IoU)); its own selection:
    per level the ``nms_pre`` best locations by that score (a top-k, no threshold), boxes
    decoded and clipped, ``multiclass_nms`` over the (location, class) pairs above
    ``score_thr`` and, with score voting (the default), each detection's box replaced by
    the vote of its class's candidates around it (score kept), detections ordered by class.
    A voted box reads many locations, on several levels: its sides are refused as targets
    (the score and logit read the NMS winner's location); without score voting they are
    the winner's box."""
    head_type = PAAHead
    reproduces = selection(PAAHead.predict_by_feat, PAAHead._predict_by_feat_single,
                           PAAHead._bbox_post_process, PAAHead.score_voting)

    def train_support(self):
        return 'PAA reassigns its positives by a per-object mixture model (paa_reassign)'

    def nms_support(self):
        return 'its NMS is followed by score voting, which Odam-NMS does not do'

    def target_support(self, target):
        if target in BOX_SIDES and self.head.with_score_voting:
            return ('a score-voted box averages the candidates of its class around it, on '
                    "several levels; explain 'score' or 'logit', or build the head with "
                    'score_voting=False')
        return None

    def score(self, rows, labels):
        cls = rows.cls.sigmoid().gather(1, labels[:, None])[:, 0]
        return (cls * rows.factor.sigmoid()).sqrt()

    @contextlib.contextmanager
    def provenance(self):
        """Inside, PAA's ``predict_by_feat`` records per image what reached its
        ``multiclass_nms`` (``bboxes`` (n, 4) original pixels, ``scores`` (n, K), their
        ``level`` and ``prior``: its per-level top-k recomputed from the outputs it was
        given) and what NMS kept (``inds`` into the flat (n, K) pairs). Yields that list."""
        adapter, images = self, []
        module = sys.modules[PAAHead._bbox_post_process.__module__]
        original_nms = module.multiclass_nms

        def recording_nms(multi_bboxes, multi_scores, score_thr, nms_cfg, max_num=-1,
                          score_factors=None, return_inds=False):
            dets, labels, inds = original_nms(multi_bboxes, multi_scores, score_thr, nms_cfg,
                                              max_num, score_factors, return_inds=True)
            cls_scores, _, factors = state['outputs']
            level, prior = adapter._selected(cls_scores, factors, len(images), state['cfg'])
            images.append(InstanceData(bboxes=multi_bboxes, scores=multi_scores[:, :-1],
                                       level=level, prior=prior))
            images[-1].set_metainfo(dict(inds=inds, score_thr=score_thr))
            return (dets, labels, inds) if return_inds else (dets, labels)

        module.multiclass_nms = recording_nms
        try:
            with self.recorded_inputs() as state:
                yield images
        finally:
            module.multiclass_nms = original_nms

    def _selected(self, cls_scores, score_factors, img: int, cfg) -> tuple:
        """(level, prior) of the rows PAA's ``_predict_by_feat_single`` keeps for image
        ``img``: per level its top ``nms_pre`` by sqrt(score x factor), as it computes."""
        nms_pre = cfg.get('nms_pre', -1)
        levels, priors = [], []
        for level, (cls, factor) in enumerate(zip(cls_scores, score_factors)):
            scores = cls[img].permute(1, 2, 0).reshape(-1, self.head.cls_out_channels).sigmoid()
            factor = factor[img].permute(1, 2, 0).reshape(-1).sigmoid()
            if 0 < nms_pre < scores.shape[0]:
                max_scores, _ = (scores * factor[:, None]).sqrt().max(dim=1)
                _, keep = max_scores.topk(nms_pre)
            else:
                keep = torch.arange(scores.shape[0], device=scores.device)
            levels.append(torch.full_like(keep, level))
            priors.append(keep)
        return torch.cat(levels), torch.cat(priors)

    def predictions(self, fwd, cfg=None, with_nms=True):
        """mmdet's ``predict_by_feat`` (NMS and score voting) with provenance; without NMS,
        the (location, class) pairs that reached it."""
        with torch.no_grad(), self.provenance() as recorded:
            results = self.head.predict_by_feat(*fwd.outputs, batch_img_metas=fwd.metas,
                                                cfg=cfg, rescale=True)
        out = []
        for i, (res, rec) in enumerate(zip(results, recorded)):
            k = rec.scores.shape[1]
            if not with_nms:
                row, label = (rec.scores > rec.score_thr).nonzero(as_tuple=True)
                res = InstanceData(bboxes=rec.bboxes[row], scores=rec.scores[row, label],
                                   labels=label)
            else:
                row, label = rec.inds // k, rec.inds % k
                if self.head.with_score_voting and len(res):  # voting orders by class
                    order = torch.argsort(label, stable=True)
                    row, label = row[order], label[order]
                if not torch.equal(label, res.labels):
                    raise RuntimeError('PAAHead: the recorded NMS differs from its labels')
            res.level, res.prior = rec.level[row], rec.prior[row]
            res.img = torch.full_like(res.labels, i)
            out.append(res)
        return out

    def every_prediction(self, fwd):
        cls = self.split(fwd.outputs)[0]
        cfg = ConfigDict(self.head.test_cfg or {})
        cfg.update(score_thr=-1.0, nms_pre=sum(c[0].numel() for c in cls) + 1)
        return self.predictions(fwd, cfg, with_nms=False)


class GFLAdapter(SampledPositives, DenseHeadAdapter):
    """GFL: regression as a distribution over distances (``integral`` x stride), decoded
    from the anchor centres; the class score carries the quality (no factor)."""
    head_type = GFLHead
    reproduces = selection(BaseDenseHead.predict_by_feat, GFLHead._predict_by_feat_single,
                           BaseDenseHead._bbox_post_process)
    forward_impl = staticmethod(GFLHead.forward_single)

    def decode(self, rows, preds, prior_coords):
        head = self.head
        dist = head.integral(rows.reg) * self.stride(preds.level, rows.reg)[:, None]
        return head.bbox_coder.decode(head.anchor_center(prior_coords), dist)

    def final_layers(self, level, cls_feat, reg_feat):
        head = self.head
        reg = head.scales[level](head.gfl_reg(reg_feat)).float()
        return self.centre(head.gfl_cls(cls_feat)), self.centre(reg), None


class FCOSAdapter(DenseHeadAdapter):
    """FCOS: GroupNorm towers, distances (scaled, x stride with ``norm_on_bbox``),
    centerness (on the reg or cls branch) as score factor."""
    head_type = FCOSHead
    forward_impl = staticmethod(FCOSHead.forward_single)

    def final_layers(self, level, cls_feat, reg_feat):
        head = self.head
        reg = head.scales[level](head.conv_reg(reg_feat)).float()
        if head.norm_on_bbox:
            reg = reg.clamp(min=0) * (1 if head.training else head.strides[level])
        else:
            reg = reg.exp()
        factor = head.conv_centerness(reg_feat if head.centerness_on_reg else cls_feat)
        return self.centre(head.conv_cls(cls_feat)), self.centre(reg), self.centre(factor)

    def train_support(self):
        return None if type(self.head).get_targets is FCOSHead.get_targets else (
            f'{type(self.head).__name__}.get_targets is not FCOS\'s')

    def train_positives(self, step):
        """FCOS's targets (``get_targets``: labels and distances per location); the GT
        index, which FCOS does not return, is the GT box the target distances rebuild."""
        head, (fwd, _, batch_gt_instances, _) = self.head, step
        sizes = [f.shape[-2:] for f in fwd.feats]
        points = head.prior_generator.grid_priors(sizes, dtype=fwd.feats[0].dtype,
                                                  device=fwd.feats[0].device)
        with torch.no_grad():
            labels, targets = head.get_targets(points, batch_gt_instances)
        num_imgs = len(batch_gt_instances)
        parts = []
        for level, (pts, lab, tgt) in enumerate(zip(points, labels, targets)):
            unit = head.strides[level] if head.norm_on_bbox else 1
            img, loc = (lab.view(num_imgs, -1) < head.num_classes).nonzero(as_tuple=True)
            parts.append(InstanceData(
                img=img, level=torch.full_like(img, level), prior=loc,
                labels=lab.view(num_imgs, -1)[img, loc],
                gt_bboxes=head.bbox_coder.decode(pts[loc], tgt.view(num_imgs, -1, 4)[img, loc]
                                                 * unit)))
        pos = InstanceData.cat(parts)
        pos.gt_index = torch.zeros_like(pos.img)
        for b, gt in enumerate(batch_gt_instances):
            sel = (pos.img == b).nonzero()[:, 0]
            if len(sel):
                gt_boxes = gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes
                dist = (pos.gt_bboxes[sel, None] - gt_boxes[None]).abs().sum(-1)
                pos.gt_index[sel] = dist.argmin(1)
        gt_bboxes = pos.gt_bboxes
        del pos.gt_bboxes
        return self._with_ious(fwd, pos, gt_bboxes)

    def decode(self, rows, preds, prior_coords):
        """FCOS's distances are in units of the stride in training (``norm_on_bbox``)."""
        reg = rows.reg
        if self.head.training and self.head.norm_on_bbox:
            reg = reg * self.stride(preds.level, reg)[:, None]
        return self.head.bbox_coder.decode(prior_coords, reg)


class CondInstAdapter(FCOSAdapter):
    """CondInst, its detections (the box branch; the masks are mmdet's, not explained):
    FCOS's towers, score and decoding; its own ``_predict_by_feat_single`` (the dynamic
    mask parameters carried along) ending in mmdet's base ``_bbox_post_process``. mmdet's
    instance segmentor predicts the boxes at the input's scale and its mask head rescales
    them (divides by the scale factor), as the adapter does."""
    head_type = CondInstBboxHead
    reproduces = (
        Same('detector', (SingleStageInstanceSegmentor.predict,
                          SingleStageInstanceSegmentor.extract_feat)),
        Same('head', (BaseDenseHead.predict, CondInstBboxHead.predict_by_feat,
                      CondInstBboxHead._predict_by_feat_single,
                      BaseDenseHead._bbox_post_process)),
        Same('mask_head', (CondInstMaskHead.predict, CondInstMaskHead.predict_by_feat,
                           CondInstMaskHead._predict_by_feat_single)))
    forward_impl = staticmethod(CondInstBboxHead.forward_single)
    rescale_in_head = False

    def parts(self):
        parts = super().parts()
        if self.model is not None:
            parts['mask_head'] = [self.model.mask_head]
        return parts

    def train_support(self):
        return 'CondInst trains its box and mask branches together (its own loss_by_feat)'

    def nms_support(self):
        return 'its mask head reads the kept detections\' dynamic parameters'


class AutoAssignAdapter(FCOSAdapter):
    """AutoAssign: FCOS's towers; distances clamped and x stride; objectness-weighted
    centerness as score factor."""
    head_type = AutoAssignHead
    forward_impl = staticmethod(AutoAssignHead.forward_single)
    decode = DenseHeadAdapter.decode

    def final_layers(self, level, cls_feat, reg_feat):
        head = self.head
        reg = head.scales[level](head.conv_reg(reg_feat)).float().clamp(min=0)
        reg = reg * head.strides[level]
        return (self.centre(head.conv_cls(cls_feat)), self.centre(reg),
                self.centre(head.conv_centerness(reg_feat)))


class FoveaAdapter(DenseHeadAdapter):
    """FoveaBox: GroupNorm towers, log-space distances in units of the level's base edge."""
    head_type = FoveaHead
    reproduces = selection(BaseDenseHead.predict_by_feat, FoveaHead._predict_by_feat_single,
                           BaseDenseHead._bbox_post_process)
    forward_impl = staticmethod(FoveaHead.forward_single)

    def decode(self, rows, preds, prior_coords):
        base = torch.tensor(self.head.base_edge_list, dtype=rows.reg.dtype,
                            device=rows.reg.device)[preds.level][:, None]
        d = rows.reg.exp() * base  # [n, 4]
        x, y = prior_coords[:, 0], prior_coords[:, 1]
        return torch.stack([x - d[:, 0], y - d[:, 1], x + d[:, 2], y + d[:, 3]], -1)

    def fast_support(self):
        if self.head.with_deform:
            return 'FoveaBox with feature alignment (deformable convs)'
        return super().fast_support()

    def final_layers(self, level, cls_feat, reg_feat):
        head = self.head
        return self.centre(head.conv_cls(cls_feat)), self.centre(head.conv_reg(reg_feat)), None


class TOODAdapter(DenseHeadAdapter):
    """TOOD: the forward's task alignment pools each level globally, so only ``exact``
    applies; the class output is already a probability and the regression output is the
    box in units of the stride."""
    head_type = TOODHead
    reproduces = selection(BaseDenseHead.predict_by_feat, TOODHead._predict_by_feat_single,
                           BaseDenseHead._bbox_post_process)

    def logit(self, rows, labels):
        """TOOD has no class logit: log(p / (1 - p)) of its aligned class probability."""
        return inverse_sigmoid(self.score(rows, labels), eps=1e-6)

    def score(self, rows, labels):
        return rows.cls.gather(1, labels[:, None])[:, 0]

    def decode(self, rows, preds, prior_coords):
        return rows.reg * self.stride(preds.level, rows.reg)[:, None]

    def towers(self, level):
        return None


class RTMDetAdapter(DenseHeadAdapter):
    """RTMDet: BatchNorm + SiLU towers (per level for the SepBN head), 1x1 final convs,
    distances exp-scaled x stride; an objectness branch, if any, folded into the class
    logit (mmdet's ``inverse_sigmoid(sigmoid_geometric_mean(cls, obj))``)."""
    head_type = RTMDetHead
    forward_impl = staticmethod(RTMDetHead.forward)
    separate_type = RTMDetSepBNHead  # the head with towers and final convs per level
    separate_forward = staticmethod(RTMDetSepBNHead.forward)

    def __init__(self, head, model=None):
        super().__init__(head, model)
        self.separate = isinstance(head, self.separate_type)
        if self.separate:
            self.forward_impl = self.separate_forward

    @property
    def final_radius(self) -> int:
        return (self.head.rtm_cls[0] if self.separate else self.head.rtm_cls).kernel_size[0] // 2

    def towers(self, level):
        head = self.head
        if self.separate:
            return list(head.cls_convs[level]), list(head.reg_convs[level])
        return list(head.cls_convs), list(head.reg_convs)

    def final_layers(self, level, cls_feat, reg_feat):
        head = self.head
        pick = (lambda m: m[level]) if self.separate else (lambda m: m)
        cls = pick(head.rtm_cls)(cls_feat)
        if head.with_objectness:
            cls = inverse_sigmoid(sigmoid_geometric_mean(cls, pick(head.rtm_obj)(reg_feat)))
        stride = head.prior_generator.strides[level][0]
        reg = self.distances(level, pick(head.rtm_reg)(reg_feat)) * stride
        return self.centre(cls), self.centre(reg), None

    def distances(self, level: int, reg: torch.Tensor) -> torch.Tensor:
        """The box regression conv's output -> distances in units of the stride, as the
        head's ``forward``."""
        if self.separate:
            return reg.exp() if self.head.exp_on_reg else reg
        return self.head.scales[level](reg.exp()).float()


class RTMDetInsAdapter(RTMDetAdapter):
    """RTMDet-Ins, its detections (the box branch; the masks are mmdet's, not explained):
    RTMDet's towers and score; distances by ReLU (SepBN) or the level's scale, x stride;
    its own ``_predict_by_feat_single`` (priors with strides, the kernels carried along)
    ending in ``_bbox_mask_post_process`` (NMS, then the masks of the kept detections).
    The candidates that reach NMS are that step's first part, which is mmdet's base
    ``_bbox_post_process`` without NMS (rescale, score factors, size filter)."""
    head_type = RTMDetInsHead
    reproduces = selection(RTMDetInsHead.predict_by_feat, RTMDetInsHead._predict_by_feat_single,
                           RTMDetInsHead._bbox_mask_post_process)
    forward_impl = staticmethod(RTMDetInsHead.forward)
    separate_type = RTMDetInsSepBNHead
    separate_forward = staticmethod(RTMDetInsSepBNHead.forward)
    post_process_name = '_bbox_mask_post_process'

    def split(self, outputs):
        return outputs[0], outputs[1], None  # (kernels and the mask features: the masks)

    def priors(self, sizes, like):
        return self.head.prior_generator.grid_priors(sizes, dtype=like.dtype,
                                                     device=like.device, with_stride=True)

    def decode(self, rows, preds, prior_coords):
        return self.head.bbox_coder.decode(prior_coords[:, :2], rows.reg)

    def post_process(self, results, mask_feat, cfg, rescale=False, with_nms=True,
                     img_meta=None):
        if with_nms:
            return super().post_process(results, mask_feat, cfg, rescale, with_nms, img_meta)
        return BaseDenseHead._bbox_post_process(self.head, results, cfg, rescale, False,
                                                img_meta)

    def distances(self, level, reg):
        if self.separate:
            return torch.relu(reg)
        return self.head.scales[level](reg)

    def nms_support(self):
        return ('its NMS is followed by the masks of the kept detections, which Odam-NMS '
                'does not make')


class CenterNetAdapter(DenseHeadAdapter):
    """CenterNet: one level (the neck's), a class heat map (sigmoid in the head), box sizes
    and centre offsets in cells; its own selection (``_decode_heatmap``): 3 x 3 local
    maxima of the heat map, the top ``test_cfg.topk`` over (cell, class), no score
    threshold and no NMS (mmdet's ``predict`` leaves ``with_nms`` off); boxes
    ``(cell + offset -+ size / 2) x input / feature size``, less the ``border`` where its
    test pipeline pasted the image (:func:`~odamtrain.inference.image_window`). Its three
    branches (heat map, sizes, offsets) are conv 3x3 - ReLU - conv 1x1, without
    normalisation: the window gradients of 'fast' mode are exact."""
    head_type = CenterNetHead
    reproduces = selection(CenterNetHead.predict_by_feat, CenterNetHead._predict_by_feat_single,
                           CenterNetHead._decode_heatmap)
    features = ('auto', 'neck', 'towers')
    forward_impl = staticmethod(CenterNetHead.forward_single)
    final_radius = 0
    num_levels = 1

    def towers(self, level):
        head = self.head
        return tuple([ConvAct(*branch[:2])] for branch in (head.heatmap_head, head.wh_head,
                                                            head.offset_head))

    def final_layers(self, level, heat_feat, wh_feat, offset_feat):
        head = self.head
        return (self.centre(head.heatmap_head[2](heat_feat).sigmoid()),
                self.centre(torch.cat([head.wh_head[2](wh_feat),
                                       head.offset_head[2](offset_feat)], 1)), None)

    def split(self, outputs):
        """(class heat maps, [sizes (2), offsets (2)], None) per level."""
        return outputs[0], [torch.cat(o, 1) for o in zip(outputs[1], outputs[2])], None

    def num_priors(self, level):
        return 1

    def level_stride(self, fwd, level):
        return fwd.metas[0]['batch_input_shape'][0] / fwd.feats[level].shape[-2]

    def prior_coords(self, fwd, preds):
        """(n, 6): each prediction's cell (x, y), its image's input / feature size ratios
        (x, y) and the image's (left, top) in the input."""
        h, w = fwd.feats[0].shape[-2:]
        like = fwd.feats[0]
        origins = [image_window(m)[0] for m in fwd.metas]  # (top, left)
        per_img = like.new_tensor([
            [m['batch_input_shape'][1] / w, m['batch_input_shape'][0] / h, left, top]
            for m, (top, left) in zip(fwd.metas, origins)])
        cells = torch.stack([preds.prior % w, preds.prior // w], 1).to(like)
        return torch.cat([cells, per_img[preds.img]], 1)

    def decode(self, rows, preds, prior_coords):
        size, offset = rows.reg[:, :2], rows.reg[:, 2:]
        centre = prior_coords[:, :2] + offset
        ratio, origin = prior_coords[:, 2:4], prior_coords[:, 4:]
        return torch.cat([(centre - size / 2) * ratio - origin,
                          (centre + size / 2) * ratio - origin], 1)

    def score(self, rows, labels):
        return rows.cls.gather(1, labels[:, None])[:, 0]

    def logit(self, rows, labels):
        """The heat map's logit (its head applies the sigmoid): log(p / (1 - p))."""
        return inverse_sigmoid(self.score(rows, labels), eps=1e-6)

    @contextlib.contextmanager
    def provenance(self):
        """Inside, the top-k of each image's heat map (``get_topk_from_heatmap``, as the
        head's module calls it, one image at a time) is recorded: yields the list of
        (cells (k,), classes (k,)) per image."""
        module = sys.modules[CenterNetHead._decode_heatmap.__module__]
        original, kept = module.get_topk_from_heatmap, []

        def recording(scores, k=20):
            out = original(scores, k)
            kept.append((out[1][0], out[2][0]))
            return out

        module.get_topk_from_heatmap = recording
        try:
            yield kept
        finally:
            module.get_topk_from_heatmap = original

    def predictions(self, fwd, cfg=None, with_nms=False):
        """mmdet's ``predict_by_feat`` (``cfg`` replaces the head's ``test_cfg``), with
        provenance; CenterNet's detections are its candidates (no NMS)."""
        head, original_cfg = self.head, self.head.test_cfg
        head.test_cfg = original_cfg if cfg is None else cfg
        try:
            with torch.no_grad(), self.provenance() as kept:
                results = head.predict_by_feat(*fwd.outputs, batch_img_metas=fwd.metas,
                                               rescale=True)
        finally:
            head.test_cfg = original_cfg
        for i, (res, (cells, classes)) in enumerate(zip(results, kept)):
            if not torch.equal(classes, res.labels):
                raise RuntimeError('CenterNetHead: the recorded top-k differs from its labels')
            res.level, res.prior = torch.zeros_like(cells), cells
            res.img = torch.full_like(res.labels, i)
        return results

    def candidates(self, fwd):
        return self.predictions(fwd)

    def nms_support(self):
        return 'CenterNet has no NMS (its top-k local maxima are its detections)'

    def every_prediction(self, fwd):
        """Every (cell, class): no local-maximum filter (kernel 1), top-k over all."""
        cfg = ConfigDict(self.head.test_cfg or {})
        cfg.update(topk=fwd.outputs[0][0][0].numel(), local_maximum_kernel=1)
        return self.predictions(fwd, cfg)


class RepPointsAdapter(DenseHeadAdapter):
    """RepPoints: at test time its ``forward`` gives the class logits and the refined
    points' box (``points2bbox``, in units of the stride) per location, through deformable
    convs (exact mode; mmcv's DCN has no batching rule, so one backward per prediction);
    mmdet's base selection with its ``_bbox_decode`` (box x stride + the point)."""
    head_type = RepPointsHead
    reproduces = selection(BaseDenseHead.predict_by_feat, RepPointsHead._predict_by_feat_single,
                           RepPointsHead._bbox_decode, BaseDenseHead._bbox_post_process)

    def decode(self, rows, preds, prior_coords):
        points = prior_coords[:, :2].repeat(1, 2)
        return rows.reg * self.stride(preds.level, rows.reg)[:, None] + points

    def towers(self, level):
        return None


class YOLOXAdapter(DenseHeadAdapter):
    """YOLOX: its own ``predict_by_feat`` over all levels flattened (one class per location,
    the best; score = sigmoid(cls) x sigmoid(objectness)); BatchNorm + SiLU towers per
    level, 1x1 final convs."""
    head_type = YOLOXHead
    reproduces = selection(YOLOXHead.predict_by_feat, YOLOXHead._bbox_post_process)
    forward_impl = staticmethod(YOLOXHead.forward_single)
    final_radius = 0

    def priors(self, sizes, like):
        return self.head.prior_generator.grid_priors(sizes, dtype=like.dtype,
                                                     device=like.device, with_stride=True)

    @contextlib.contextmanager
    def provenance(self):
        """Inside, YOLOX's ``_bbox_post_process`` receives ``level`` / ``prior`` of its
        candidates: YOLOX's own selection (best class, ``objectness x score >= score_thr``)
        recomputed from the outputs it is given (checked against its labels)."""
        head, adapter = self.head, self

        def post_process(results, cfg, rescale=False, with_nms=True, img_meta=None):
            level, prior, labels = adapter._selected(calls['outputs'], calls['img'],
                                                     calls['cfg'])
            if not torch.equal(labels, results.labels):
                raise RuntimeError('YOLOXHead: the recomputed selection differs from its own')
            results.level, results.prior = level, prior
            calls['img'] += 1
            return YOLOXHead._bbox_post_process(head, results, cfg, rescale, with_nms,
                                                img_meta)

        head._bbox_post_process = post_process
        try:
            with self.recorded_inputs() as calls:
                yield
        finally:
            del head._bbox_post_process

    def _selected(self, outputs, img: int, cfg):
        """(level, prior, label) of the locations YOLOX keeps for image ``img``."""
        cls, _, obj = outputs
        sizes = [c.shape[2] * c.shape[3] for c in cls]
        flat_cls = torch.cat([c[img].permute(1, 2, 0).reshape(-1, c.shape[1])
                              for c in cls]).sigmoid()
        flat_obj = torch.cat([o[img].permute(1, 2, 0).reshape(-1) for o in obj]).sigmoid()
        max_scores, labels = torch.max(flat_cls, 1)
        keep = (flat_obj * max_scores >= cfg.score_thr).nonzero()[:, 0]
        starts = torch.tensor([0] + sizes, device=keep.device).cumsum(0)
        level = torch.searchsorted(starts[1:], keep, right=True)
        return level, keep - starts[level], labels[keep]

    def every_prediction(self, fwd):
        cfg = ConfigDict(self.head.test_cfg or {})
        cfg.update(score_thr=-1.0)
        return self.predictions(fwd, cfg, with_nms=False)

    def score(self, rows, labels):
        return rows.cls.sigmoid().gather(1, labels[:, None])[:, 0] * rows.factor.sigmoid()

    def decode(self, rows, preds, prior_coords):
        return self.head._bbox_decode(prior_coords, rows.reg)

    def towers(self, level):
        head = self.head
        return list(head.multi_level_cls_convs[level]), list(head.multi_level_reg_convs[level])

    def final_layers(self, level, cls_feat, reg_feat):
        head = self.head
        return (self.centre(head.multi_level_conv_cls[level](cls_feat)),
                self.centre(head.multi_level_conv_reg[level](reg_feat)),
                self.centre(head.multi_level_conv_obj[level](reg_feat)))


class YOLOv3Adapter(DenseHeadAdapter):
    """YOLOv3: one output map per level, A anchors x (4 box, 1 objectness, K classes); its
    own ``predict_by_feat``: all levels flattened, objectness >= ``conf_thr``, then score
    threshold and top-k over (prior, class) (``filter_scores_and_topk``), mmdet's base
    ``_bbox_post_process``; score = sigmoid(class) x sigmoid(objectness); boxes by YOLO's
    coder from the sigmoided centre offsets. Towers: each level's 3x3 bridge conv (BN +
    LeakyReLU), shared by every output, then a 1x1 prediction conv."""
    head_type = YOLOV3Head
    reproduces = selection(YOLOV3Head.predict_by_feat, BaseDenseHead._bbox_post_process)
    forward_impl = staticmethod(YOLOV3Head.forward)
    final_radius = 0

    def towers(self, level):
        return [self.head.convs_bridge[level]], []

    def final_layers(self, level, cls_feat, reg_feat):
        out = self.centre(self.head.convs_pred[level](cls_feat))  # [n, A * (5 + K)]
        x = out.reshape(len(out), self.num_priors(level), self.head.num_attrib)
        return (x[..., 5:].reshape(len(out), -1), x[..., :4].reshape(len(out), -1),
                x[..., 4])

    @contextlib.contextmanager
    def provenance(self):
        """Inside, ``_bbox_post_process`` receives ``level`` / ``prior`` of YOLOv3's
        candidates: its top-k (recorded) of the predictions that pass ``conf_thr``
        (recomputed from the outputs it is given)."""
        head, adapter = self.head, self
        module = sys.modules[YOLOV3Head.predict_by_feat.__module__]
        original = module.filter_scores_and_topk

        def recording(scores, score_thr, topk, results=None):
            out = original(scores, score_thr, topk, results)
            state['kept'] = out[2]
            return out

        def post_process(results, cfg, rescale=False, with_nms=True, img_meta=None):
            maps = state['outputs'][0]
            flat = adapter._passing_conf(maps, state['img'], state['cfg'])
            results.level, results.prior = adapter._level_prior(flat[state['kept']], maps)
            state['img'] += 1
            return BaseDenseHead._bbox_post_process(head, results, cfg, rescale, with_nms,
                                                    img_meta)

        module.filter_scores_and_topk = recording
        head._bbox_post_process = post_process
        try:
            with self.recorded_inputs() as state:
                yield
        finally:
            module.filter_scores_and_topk = original
            del head._bbox_post_process

    def _flat(self, maps: list, img: int) -> torch.Tensor:
        """(sum h w A, 5 + K) the raw outputs of image ``img``, levels flattened in order."""
        return torch.cat([m[img].permute(1, 2, 0).reshape(-1, self.head.num_attrib)
                          for m in maps])

    def _passing_conf(self, maps: list, img: int, cfg) -> torch.Tensor:
        """Flat indices of the predictions whose objectness passes ``conf_thr``."""
        objectness = self._flat(maps, img)[:, 4].sigmoid()
        conf_thr = cfg.get('conf_thr', -1)
        return ((objectness >= conf_thr).nonzero()[:, 0] if conf_thr > 0
                else torch.arange(len(objectness), device=objectness.device))

    def _level_prior(self, flat: torch.Tensor, maps: list) -> tuple:
        sizes = [m.shape[2] * m.shape[3] * self.num_priors(i) for i, m in enumerate(maps)]
        starts = torch.tensor([0] + sizes, device=flat.device).cumsum(0)
        level = torch.searchsorted(starts[1:], flat, right=True)
        return level, flat - starts[level]

    def every_prediction(self, fwd):
        cfg = ConfigDict(self.head.test_cfg or {})
        cfg.update(score_thr=-1.0, conf_thr=-1,
                   nms_pre=sum(m[0].numel() for m in fwd.outputs[0]) + 1, min_bbox_size=-1)
        return self.predictions(fwd, cfg, with_nms=False)

    def rows(self, outputs, preds):
        maps, parts, order = outputs[0], [], []
        for level in preds.level.unique().tolist():
            idx = (preds.level == level).nonzero()[:, 0]
            order.append(idx)
            m = maps[level]  # [B, A * (5 + K), h, w]
            flat = m.permute(0, 2, 3, 1).reshape(len(m), -1, self.head.num_attrib)
            parts.append(flat[preds.img[idx], preds.prior[idx]])
        x = (torch.cat(parts)[torch.argsort(torch.cat(order))] if order
             else maps[0].new_zeros(0, self.head.num_attrib))
        return DenseRows(x[:, 5:], x[:, :4], x[:, 4])

    def score(self, rows, labels):
        return rows.cls.sigmoid().gather(1, labels[:, None])[:, 0] * rows.factor.sigmoid()

    def decode(self, rows, preds, prior_coords):
        reg = torch.cat([rows.reg[:, :2].sigmoid(), rows.reg[:, 2:]], 1)
        return self.head.bbox_coder.decode(prior_coords, reg,
                                           self.stride(preds.level, reg)[:, None])


# build_adapter takes the head's most specific class here; DenseHeadAdapter covers any
# other head with mmdet's base post-processing (exact mode)
DENSE_ADAPTERS = (RetinaAdapter, SABLRetinaAdapter, PAAAdapter, ATSSAdapter, GFLAdapter,
                  CondInstAdapter, FCOSAdapter,
                  AutoAssignAdapter, FoveaAdapter, TOODAdapter, RTMDetInsAdapter,
                  RTMDetAdapter, CenterNetAdapter, RepPointsAdapter, YOLOXAdapter,
                  YOLOv3Adapter, DenseHeadAdapter)
