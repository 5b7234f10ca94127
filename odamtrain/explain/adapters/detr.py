"""Adapter of mmdet's DETR-like detectors (DETR, Conditional DETR, DAB-DETR, Deformable DETR,
DINO): the only code that knows their internals.

Shapes: B images, Q queries, K classes (K + 1 for DETR's softmax), n predictions, L levels.

A prediction's provenance: ``img``, ``query`` and ``labels``. mmdet's detections come from its
own ``bbox_head.predict`` (top-k over queries, or queries x classes for sigmoid heads), run
while the class and box outputs of the last decoder layer are captured with their graph;
the selection is recomputed from those outputs and checked against mmdet's labels.

What A is (``features``):

* 'backbone' (DETR, Conditional DETR, DAB-DETR by default, the paper: "features from the last
  stage of ResNet50 are used to explain DETR because there is no detector neck"; mmdet's
  ChannelMapper is a 1x1 projection of that stage): the backbone outputs the neck reads;
* 'neck' (Deformable DETR, DINO by default): each level of the multi-scale neck output the
  transformer reads; a detection's map is the sum of its levels' maps at image resolution;
* 'memory': the encoder's output, split back into its levels.

Queries interact through the decoder's self-attention, so every query's gradient takes the
whole transformer into account: vectorised autograd over the predictions, chunked by memory.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mmdet.models.dense_heads import DETRHead
from mmdet.models.detectors import DeformableDETR, DetectionTransformer
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmengine.structures import InstanceData

from ..detr_gradients import detr_heatmaps
from ..protocol import (
    BOX_SIDES,
    DetectorAdapter,
    Forward,
    Same,
    UnsupportedDetectorError,
    instance_override,
)

__all__ = ['DETRForward', 'DETRAdapter']


@dataclass
class DETRForward(Forward):
    """One forward of a DETR-like detector from A.

    Attributes:
        feats: L x (B, C, h, w) A as maps (views of the ``leaves``).
        metas: the images' metainfo.
        leaves: the tensors requiring grad that A is made of.
        strides: per level, in input pixels.
        cls: (B, Q, K) class logits of the last decoder layer, with the graph to the leaves.
        boxes: (B, Q, 4) normalised (cx, cy, w, h) of the last decoder layer, likewise.
        dets: mmdet's detections of that forward.
    """
    leaves: list = None
    strides: list = None
    cls: torch.Tensor = None
    boxes: torch.Tensor = None
    dets: list = None


class DETRAdapter(DetectorAdapter):
    """mmdet's ``DetectionTransformer`` detectors with a ``DETRHead`` (and its subclasses that
    keep ``_predict_by_feat_single``). Set predictions: there is no NMS."""
    head_type = DETRHead
    features = ('auto', 'backbone', 'neck', 'memory')
    reproduces = (Same('detector', (DetectionTransformer.predict,)),
                  Same('head', (DETRHead._predict_by_feat_single,)))

    def other_problems(self):
        return [f'{self.name} has no {name} (expected an mmdet DetectionTransformer)'
                for name in ('forward_transformer', 'pre_transformer', 'forward_encoder',
                             'pre_decoder', 'forward_decoder') if not hasattr(self.model, name)]

    @property
    def test_cfg(self):
        return self.head.test_cfg

    def check_features(self, features: str) -> str:
        if super().check_features(features) != 'auto':
            return features
        return 'neck' if isinstance(self.model, DeformableDETR) else 'backbone'

    def mode_fallback(self):
        return f'every query of {self.name} attends to the whole map'

    # ------------------------------------------------------------------ forward
    @contextlib.contextmanager
    def _captured_outputs(self, store: dict):
        """Inside, the head's ``predict_by_feat`` stores the last layer's class and box
        outputs (with their graph) before running."""
        head, original = self.head, type(self.head).predict_by_feat

        def predict_by_feat(layer_cls_scores, layer_bbox_preds, *args, **kwargs):
            store.update(cls=layer_cls_scores[-1], boxes=layer_bbox_preds[-1])
            return original(head, layer_cls_scores, layer_bbox_preds, *args, **kwargs)

        with instance_override(head, 'predict_by_feat', predict_by_feat):
            yield

    def forward(self, inputs, data_samples, features='auto') -> DETRForward:
        """The detector from A (leaves, grad enabled inside), with mmdet's detections of
        ``bbox_head.predict``."""
        features = self.check_features(features)
        model, store = self.model, {}
        metas = [s.metainfo for s in data_samples]
        with torch.no_grad():
            stages = model.backbone(inputs)
            img_feats = model.neck(stages) if model.with_neck and features != 'backbone' \
                else None
        with torch.enable_grad(), self._captured_outputs(store):
            if features == 'backbone':
                leaves = [x.detach().requires_grad_(True) for x in stages]
                levels = leaves
                feats = model.neck(tuple(leaves)) if model.with_neck else tuple(leaves)
                head_inputs = model.forward_transformer(feats, data_samples)
            elif features == 'neck':
                leaves = [x.detach().requires_grad_(True) for x in img_feats]
                levels = leaves
                head_inputs = model.forward_transformer(tuple(leaves), data_samples)
            else:
                leaves, levels, head_inputs = self._from_memory(img_feats, data_samples)
            dets = model.bbox_head.predict(**head_inputs, batch_data_samples=data_samples,
                                           rescale=True)
        strides = [_stride(inputs.shape[-2], lv.shape[-2]) for lv in levels]
        return DETRForward(levels, metas, leaves, strides, store['cls'], store['boxes'], dets)

    def _from_memory(self, img_feats, data_samples):
        """mmdet's ``forward_transformer`` with the encoder's output as the leaf."""
        model = self.model
        enc_in, dec_in = model.pre_transformer(img_feats, data_samples)
        with torch.no_grad():
            enc_out = model.forward_encoder(**enc_in)
        leaf = enc_out['memory'].detach().requires_grad_(True)  # [B, tokens, C]
        enc_out['memory'] = leaf
        tmp_dec_in, head_inputs = model.pre_decoder(**enc_out)
        dec_in.update(tmp_dec_in)
        head_inputs.update(model.forward_decoder(**dec_in))
        levels, start = [], 0
        for f in img_feats:  # the memory is the levels' tokens, flattened in order
            b, c, h, w = f.shape
            levels.append(leaf[:, start:start + h * w].transpose(1, 2).reshape(b, c, h, w))
            start += h * w
        return [leaf], levels, head_inputs

    # -------------------------------------------------------------- predictions
    def _selected(self, fwd, i: int, max_per_img: int) -> tuple:
        """(query, label) of the detections mmdet's ``_predict_by_feat_single`` keeps from
        image ``i``'s class outputs (Q, K)."""
        cls = fwd.cls[i].detach()
        if self.head.loss_cls.use_sigmoid:
            _, index = cls.sigmoid().reshape(-1).topk(max_per_img)
            k = self.head.num_classes
            return index // k, index % k
        scores, labels = F.softmax(cls, dim=-1)[..., :-1].max(-1)
        _, query = scores.topk(max_per_img)
        return query, labels[query]

    def predictions(self, fwd, cfg=None) -> list:
        """mmdet's detections (from :meth:`forward`, made with the head's own test config:
        ``cfg`` is not used) with ``query`` and ``img``."""
        out = []
        for i, det in enumerate(fwd.dets):
            max_per_img = self.head.test_cfg.get('max_per_img', fwd.cls.shape[1])
            query, labels = self._selected(fwd, i, max_per_img)
            if not torch.equal(labels, det.labels):
                raise RuntimeError(f'{type(self.head).__name__}: the recomputed selection '
                                   'differs from its own')
            det = det.clone()
            det.bboxes, det.scores = det.bboxes.detach(), det.scores.detach()
            det.query, det.img = query, torch.full_like(query, i)
            out.append(det)
        return out

    def candidates(self, fwd) -> list:
        raise UnsupportedDetectorError(f'{self.name} makes set predictions: there is no NMS '
                                       'for Odam-NMS to replace')

    def every_prediction(self, fwd) -> list:
        """Every (query, class) of every image with its score and box as mmdet's
        ``_predict_by_feat_single`` makes them (clipped to the image, original pixels)."""
        out = []
        q, device = fwd.cls.shape[1], fwd.cls.device
        for i, meta in enumerate(fwd.metas):
            k = self._num_labels(fwd, i)
            query = torch.arange(q, device=device).repeat_interleave(k)
            labels = torch.arange(k, device=device).repeat(q)
            preds = InstanceData(query=query, labels=labels, img=torch.full_like(query, i))
            h, w = meta['img_shape'][:2]
            with torch.no_grad():
                preds.scores = self.attribute('score', fwd, preds)
                box = bbox_cxcywh_to_xyxy(fwd.boxes[i, query]) * box_scale(w, h, fwd.boxes)
                box = torch.minimum(box.clamp(min=0), box_scale(w, h, fwd.boxes))
                preds.bboxes = box / box_scale(*meta['scale_factor'][:2], fwd.boxes)
            out.append(preds)
        return out

    def _num_labels(self, fwd, i: int) -> int:
        """How many classes image ``i``'s predictions choose from."""
        return self.head.num_classes

    # ---------------------------------------------------------------- attribute
    def attribute(self, target, fwd, preds):
        """'score' is mmdet's: sigmoid, or softmax with the no-object class left out."""
        cls = fwd.cls[preds.img, preds.query]  # [n, K]
        if target == 'logit':
            return cls.gather(1, preds.labels[:, None])[:, 0]
        if target == 'score':
            probs = cls.sigmoid() if self.head.loss_cls.use_sigmoid else cls.softmax(-1)
            return probs.gather(1, preds.labels[:, None])[:, 0]
        if target in BOX_SIDES:
            i = BOX_SIDES.index(target)
            box = bbox_cxcywh_to_xyxy(fwd.boxes[preds.img, preds.query])[:, i]
            size = torch.tensor([[m['img_shape'][1 - i % 2] / m['scale_factor'][i % 2]]
                                 for m in fwd.metas], dtype=box.dtype, device=box.device)
            return box * size[preds.img, 0]
        raise ValueError(f"target must be 'score', 'logit' or one of {BOX_SIDES}, "
                         f'got {target!r}')

    def leaf_attribute(self, target, fwd, preds):
        with torch.enable_grad():
            y = self.attribute(target, fwd, preds)
        return y, fwd.leaves, preds.img

    def heatmaps(self, fwd, dets, settings) -> None:
        detr_heatmaps(self, fwd, dets, settings)


def box_scale(sx: float, sy: float, like: torch.Tensor) -> torch.Tensor:
    """(4,) (sx, sy, sx, sy) for x1y1x2y2 boxes."""
    return like.new_tensor([sx, sy, sx, sy])


def _stride(input_size: int, level_size: int) -> int:
    """The power-of-two stride of a level of ``level_size`` cells over an input of
    ``input_size`` pixels (unpadded inputs need not divide)."""
    return 2 ** round(math.log2(input_size / level_size))
