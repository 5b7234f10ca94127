"""Odam-NMS (Zhao & Chan, ICLR'23, Algorithm 1): NMS that asks the heat maps. The operator,
the candidates it compares and their maps, and its wiring into any covered head.

Walking the boxes by decreasing score, box p is a duplicate of an already kept box d if

    (IoU(p, d) >  T_iou  and  corr(p, d) > T_l)     overlapping and explained alike, or
    (IoU(p, d) <= T_iou  and  corr(p, d) > T_h)     apart but explained the same way.

The paper writes IoU >= T_iou; like mmcv's ``nms`` and the authors' code we use the strict
``IoU > T_iou``, so that with T_l <= -1 and T_h > 1 the keep set is exactly mmcv's ``nms``.
corr is the normalised correlation of the maps, as in the authors' code: each map is resized
to short edge 50, flattened and L2-normalised; corr is the dot product (cosine similarity).
Maps are >= 0, so corr lies in [0, 1]; an all-zero map has corr 0 with everything.

In a detector: ``test_cfg.nms = dict(type='odam_nms', iou_threshold=0.5, corr_low=0.2,
corr_high=0.8)`` (two-stage: ``test_cfg.rcnn.nms``). The candidates that reach NMS
(:meth:`~odamtrain.explain.protocol.DetectorAdapter.candidates`) are explained with ODAM from
the forward that made them (class logit, maps at short edge 50; keys ``target``, ``mode``,
``map_size``, ``keep_heatmaps``: :data:`ODAM_NMS_DEFAULTS`) and suppressed with
:func:`odam_nms`. Any other NMS type is mmdet's own path (Odam-NMS's keys dropped, so
``--cfg-options model.test_cfg.nms.type=nms`` just works). :class:`OdamNMSDenseMixin` /
:class:`OdamNMSRoIMixin` put this into a head (:func:`odamtrain.models.install_odam`).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from mmdet.structures.bbox import scale_boxes
from mmengine.config import ConfigDict

from odamtrain.explain import ExplanationSettings, head_adapter

__all__ = ['odam_nms', 'batched_odam_nms', 'map_vectors', 'box_iou', 'greedy_odam_nms',
           'add_heatmaps', 'odam_nms_keep', 'MAP_KEYS', 'without_odam_keys', 'plain_nms_config',
           'is_odam_nms', 'odam_nms_settings', 'odam_nms_candidates', 'odam_nms_select',
           'odam_nms_detections', 'odam_nms_results', 'OdamNMSDenseMixin', 'OdamNMSRoIMixin',
           'ODAM_NMS_DEFAULTS', 'ODAM_KEYS', 'NMS_KEYS', 'check_odam_nms_config']

# Odam-NMS's maps: the class logit (the paper), short edge 50, 'fast' gradients, A = the
# features the family explains by default (dense heads: the FPN level)
ODAM_NMS_DEFAULTS = dict(target='logit', mode='fast', map_size=50, features='auto')

MAP_SHORT_EDGE = 50
# boxes per block of the walk (greedy_odam_nms)
BLOCK = 128


def box_iou(boxes: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """IoU computed like mmcv's CPU nms (offset 0, ``inter / (area_i + area_j - inter)``).

    Args:
        boxes: (N, 4) x1y1x2y2.
        others: (M, 4) x1y1x2y2.

    Returns:
        Tensor: (N, M).
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [N]
    area_o = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])  # [M]
    lt = torch.maximum(boxes[:, None, :2], others[None, :, :2])  # [N, M, 2]
    rb = torch.minimum(boxes[:, None, 2:], others[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, None] + area_o[None, :] - inter)


def map_vectors(heatmaps: torch.Tensor) -> torch.Tensor:
    """Unit vectors whose dot products are the maps' normalised correlation: each map resized
    bilinearly to short edge 50, flattened and L2-normalised (an all-zero map stays zero).

    Args:
        heatmaps: (N, h, w) >= 0.

    Returns:
        Tensor: (N, D).
    """
    n, h, w = heatmaps.shape
    s = MAP_SHORT_EDGE / min(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    maps = heatmaps.float()
    if n == 0:
        return maps.new_zeros(0, size[0] * size[1])
    if (h, w) != size:
        maps = F.interpolate(maps[:, None], size=size, mode='bilinear', align_corners=False)
    return F.normalize(maps.reshape(n, -1), dim=1)


def greedy_odam_nms(boxes: torch.Tensor, vectors: torch.Tensor, labels: torch.Tensor | None,
                    iou_threshold: float, corr_low: float, corr_high: float) -> list:
    """Algorithm 1's walk over boxes already sorted by decreasing score: positions kept.

    A box is a duplicate of an earlier kept box of its label when (IoU > T_iou and corr >
    T_l) or (IoU <= T_iou and corr > T_h). The walk goes in blocks of :data:`BLOCK` boxes:
    each block's IoU and correlation are computed against the boxes kept so far and the
    block itself only (not all pairs), then the block is walked in order.

    Args:
        boxes: (N, 4) x1y1x2y2; labels: (N,) or None.
        vectors: (M, D) :func:`map_vectors` of the first M <= N boxes; a box without one
            is a duplicate by the IoU test alone (IoU > T_iou: mmcv's ``nms``).
    """
    keep = []
    n, m = len(boxes), len(vectors)
    if m < n:  # zero vectors for the boxes without maps (their rows use the IoU alone)
        vectors = torch.cat([vectors, vectors.new_zeros(n - m, vectors.shape[1])])
    for start in range(0, n, BLOCK):
        end = min(n, start + BLOCK)
        cols = torch.cat([torch.as_tensor(keep, dtype=torch.long, device=boxes.device),
                          torch.arange(start, end, device=boxes.device)])
        overlap = box_iou(boxes[start:end], boxes[cols]) > iou_threshold  # [B, K + B]
        corr = vectors[start:end] @ vectors[cols].T
        duplicate = (overlap & (corr > corr_low)) | (~overlap & (corr > corr_high))
        if end > m:
            unmapped = torch.arange(start, end, device=boxes.device) >= m
            duplicate[unmapped] = overlap[unmapped]
        if labels is not None:
            duplicate &= labels[start:end, None] == labels[None, cols]
        duplicate = duplicate.cpu().numpy()  # [later box, earlier box]
        kept_before = len(keep)
        removed = duplicate[:, :kept_before].any(1)
        for i in range(end - start):
            if not removed[i]:
                keep.append(start + i)
                removed |= duplicate[:, kept_before + i]
    return keep


def odam_nms(boxes: torch.Tensor, scores: torch.Tensor, heatmaps: torch.Tensor,
             iou_threshold: float = 0.5, corr_low: float = 0.2, corr_high: float = 0.8,
             labels: torch.Tensor | None = None,
             map_score_thr: float | None = None) -> torch.Tensor:
    """Odam-NMS (Zhao & Chan, ICLR'23, Algorithm 1).

    Args:
        boxes: (N, 4) x1y1x2y2.
        scores: (N,).
        heatmaps: (N, h, w) >= 0 at any resolution.
        iou_threshold: T_iou.
        corr_low: T_l (0.2): above T_iou a box is a duplicate only if its map's correlation
            with the kept box's exceeds T_l.
        corr_high: T_h (0.8): at or below T_iou a box is still a duplicate if the
            correlation exceeds T_h.
        labels: (N,) optional classes; boxes of different classes never suppress each other.
        map_score_thr: if set, only boxes scoring >= it are compared by their maps; a box
            scoring below it is a duplicate by the IoU test alone (its map is not read).
            The walk goes by decreasing score, so what is kept among the boxes scoring >=
            it is exactly Odam-NMS's.

    Returns:
        Tensor: int64 indices of the kept boxes, sorted by decreasing score (ties in the
        order of ``scores.sort(descending=True)``, like mmcv's ``nms``).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = scores.sort(0, descending=True)[1]  # the same sort as mmcv's nms
    mapped = len(order) if map_score_thr is None else int((scores >= map_score_thr).sum())
    keep = greedy_odam_nms(boxes[order].float(), map_vectors(heatmaps[order[:mapped]]),
                           None if labels is None else labels[order],
                           iou_threshold, corr_low, corr_high)
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def batched_odam_nms(boxes: torch.Tensor, scores: torch.Tensor, heatmaps: torch.Tensor,
                     idxs: torch.Tensor, nms_cfg: dict):
    """Per-class Odam-NMS shaped like mmcv's ``batched_nms``.

    Args:
        boxes: (N, 4) x1y1x2y2.
        scores: (N,).
        heatmaps: (N, h, w) >= 0.
        idxs: (N,) class of each box.
        nms_cfg: ``iou_threshold``, ``corr_low``, ``corr_high`` and optionally ``max_num``
            (keep at most that many) and ``map_score_thr``.

    Returns:
        tuple: ``(dets, keep)``: dets (K, 5) kept boxes with their scores, keep (K,) int64
        indices by decreasing score.
    """
    cfg = dict(nms_cfg)
    cfg.pop('type', None)
    max_num = cfg.pop('max_num', -1)
    keep = odam_nms(boxes, scores, heatmaps, labels=idxs, **cfg)
    if max_num > 0:
        keep = keep[:max_num]
    return torch.cat([boxes[keep], scores[keep][:, None]], 1), keep


# keys of an odam_nms config that configure the heat maps rather than the operator
MAP_KEYS = ('target', 'mode', 'map_size', 'features', 'keep_heatmaps')
# Odam-NMS's own keys (the rest, type / iou_threshold / max_num, are also mmdet NMS's)
ODAM_KEYS = ('corr_low', 'corr_high', 'map_score_thr') + MAP_KEYS


def without_odam_keys(nms_cfg: dict) -> dict:
    """A copy of an NMS config without Odam-NMS's own keys (thresholds and map settings), so
    that switching ``type`` to 'nms' / 'soft_nms' from the command line just works.

    Args:
        nms_cfg: an NMS config.

    Returns:
        dict: the copy.
    """
    return {k: v for k, v in nms_cfg.items()
            if k not in ODAM_KEYS}


def is_odam_nms(test_cfg) -> bool:
    """Whether a head's test config asks for Odam-NMS.

    Args:
        test_cfg: a head's test config (or None).

    Returns:
        bool
    """
    return bool(test_cfg) and (test_cfg.get('nms') or {}).get('type') == 'odam_nms'


def plain_nms_config(test_cfg):
    """A head's test config with its NMS config stripped of Odam-NMS's keys (for mmdet's own
    NMS types, e.g. after ``--cfg-options model.test_cfg.nms.type=nms``).

    Args:
        test_cfg: a head's test config.

    Returns:
        ConfigDict: the copy.
    """
    if not test_cfg or not test_cfg.get('nms'):
        return test_cfg
    cfg = ConfigDict(test_cfg.copy())
    cfg.nms = without_odam_keys(cfg.nms)
    return cfg


def odam_nms_keep(cand, nms_cfg: dict, max_per_img: int = -1):
    """The candidates that Odam-NMS keeps (per class, by decreasing score).

    Args:
        cand: an InstanceData with ``bboxes`` (N, 4), ``scores``, ``labels`` and
            ``heatmaps`` (N, h, w).
        nms_cfg: the ``odam_nms`` config (:func:`batched_odam_nms`).
        max_per_img: keep at most this many (<= 0: all).

    Returns:
        Tensor: (K,) int64 indices into ``cand``.
    """
    op_cfg = {k: v for k, v in nms_cfg.items() if k not in MAP_KEYS}
    _, keep = batched_odam_nms(cand.bboxes, cand.scores, cand.heatmaps, cand.labels, op_cfg)
    return keep[:max_per_img] if max_per_img > 0 else keep


# ------------------------------------------------------------------ in a detector
def odam_nms_settings(nms_cfg: dict) -> ExplanationSettings:
    """The maps an ``odam_nms`` config asks for: ODAM with the paper's Gaussian Phi, its
    ``target``, ``mode``, ``map_size`` and ``features`` (:data:`ODAM_NMS_DEFAULTS`),
    validated."""
    return ExplanationSettings(method='odam', smooth='gaussian', normalize=None, **{
        k: nms_cfg.get(k, v) for k, v in ODAM_NMS_DEFAULTS.items()})


# every key an odam_nms config may have
NMS_KEYS = ('type', 'iou_threshold', 'max_num') + ODAM_KEYS


def check_odam_nms_config(nms_cfg: dict, adapter) -> None:
    """ValueError naming what is wrong in an ``odam_nms`` config for the adapter's detector:
    an unknown key, a threshold that is not a number, a map setting it does not offer."""
    unknown = sorted(set(nms_cfg) - set(NMS_KEYS))
    if unknown:
        raise ValueError(f'odam_nms: unknown keys {unknown}; expected some of {list(NMS_KEYS)}')
    for key in ('iou_threshold', 'corr_low', 'corr_high', 'map_score_thr'):
        value = nms_cfg.get(key)
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, (int, float))):
            raise ValueError(f'odam_nms: {key} must be a number, got {value!r}')
    adapter.check_features(odam_nms_settings(nms_cfg).features)


def odam_nms_candidates(adapter, fwd, nms_cfg: dict | None = None) -> list:
    """Per image the candidates that reach NMS with the ODAM ``heatmaps`` an ``odam_nms``
    config asks for; with ``map_score_thr`` only the candidates scoring >= it get a map (the
    others' rows are zero: Odam-NMS does not read them).

    Args:
        adapter: the detector's :class:`~odamtrain.explain.DetectorAdapter`.
        fwd: its forward of the batch (:meth:`DetectorAdapter.forward`).
        nms_cfg: the ``odam_nms`` config (default: the adapter's test config's).

    Returns:
        list: per image an InstanceData: ``bboxes`` (N, 4) x1y1x2y2 original pixels,
        ``scores``, ``labels``, provenance and ``heatmaps`` (N, h, w).
    """
    nms_cfg = nms_cfg or adapter.test_cfg.nms
    cands = adapter.candidates(fwd)
    thr = nms_cfg.get('map_score_thr')
    add_heatmaps(adapter, fwd, cands, odam_nms_settings(nms_cfg),
                 None if thr is None else [c.scores >= thr for c in cands])
    return cands


def add_heatmaps(adapter, fwd, dets: list, settings: ExplanationSettings,
                 rows: list | None = None) -> None:
    """Set ``heatmaps`` on each image's predictions ``dets`` of the forward ``fwd``: maps
    of the (N,) bool ``rows`` of each image (default: all), the other rows zero or, where
    ``heatmaps`` is already set, unchanged."""
    if rows is None:
        adapter.heatmaps(fwd, dets, settings)
        return
    parts = [det[row] for det, row in zip(dets, rows)]
    adapter.heatmaps(fwd, parts, settings)
    for det, row, part in zip(dets, rows, parts):
        if 'heatmaps' not in det:
            det.heatmaps = part.heatmaps.new_zeros(len(det), *part.heatmaps.shape[1:])
        det.heatmaps[row] = part.heatmaps


def odam_nms_select(cands: list, nms_cfg: dict, max_per_img: int = -1) -> list:
    """Odam-NMS of each image's candidates; the kept predictions keep their fields,
    ``heatmaps`` included.

    Args:
        cands: per image the candidates (:func:`odam_nms_candidates`).
        nms_cfg: the ``odam_nms`` config.
        max_per_img: keep at most this many per image (<= 0: all).

    Returns:
        list: per image an InstanceData of the kept candidates.
    """
    return [cand[odam_nms_keep(cand, nms_cfg, max_per_img)] for cand in cands]


def odam_nms_detections(adapter, fwd) -> list:
    """Odam-NMS's detections of each image, as the adapter's test config asks (at most its
    ``max_per_img``); with ``keep_heatmaps`` and ``map_score_thr`` the kept detections
    scoring below it get their maps too.

    Args:
        adapter: the detector's :class:`~odamtrain.explain.DetectorAdapter`.
        fwd: its forward of the batch.

    Returns:
        list: per image the kept candidates (:func:`odam_nms_candidates`' fields).
    """
    cfg = adapter.test_cfg
    kept = odam_nms_select(odam_nms_candidates(adapter, fwd), cfg.nms,
                           cfg.get('max_per_img', -1))
    thr = cfg.nms.get('map_score_thr')
    if cfg.nms.get('keep_heatmaps', False) and thr is not None:
        add_heatmaps(adapter, fwd, kept, odam_nms_settings(cfg.nms),
                     [k.scores < thr for k in kept])
    return kept


def odam_nms_results(kept: list, batch_img_metas: list, nms_cfg: dict,
                     rescale: bool = True) -> list:
    """Odam-NMS's kept predictions in mmdet's result format.

    Args:
        kept: per image the kept candidates (:func:`odam_nms_select`).
        batch_img_metas: per image its metainfo.
        nms_cfg: the ``odam_nms`` config (``keep_heatmaps`` keeps the maps).
        rescale: boxes in original pixels (True) or at the network input's scale.

    Returns:
        list: per image an InstanceData with ``bboxes`` (K, 4) x1y1x2y2, ``scores``,
        ``labels`` (and ``heatmaps``).
    """
    results = []
    keys = ('bboxes', 'scores', 'labels') + (
        ('heatmaps',) if nms_cfg.get('keep_heatmaps', False) else ())
    for res, meta in zip(kept, batch_img_metas):
        for key in list(res.keys()):
            if key not in keys:
                res.pop(key)
        if not rescale:
            res.bboxes = scale_boxes(res.bboxes, meta['scale_factor'])
        results.append(res)
    return results


@contextlib.contextmanager
def _test_cfg(head, cfg):
    original = head.test_cfg
    head.test_cfg = cfg
    try:
        yield
    finally:
        head.test_cfg = original


class OdamNMSDenseMixin:
    """Odam-NMS in a one-stage dense head's ``predict`` (through its adapter)."""
    odam_mixin = True  # the adapters look through it at the head's own methods

    def predict(self, x, batch_data_samples, rescale: bool = False):
        if not is_odam_nms(self.test_cfg):  # mmdet's own path
            with _test_cfg(self, plain_nms_config(self.test_cfg)):
                return super().predict(x, batch_data_samples, rescale=rescale)
        adapter = head_adapter(self)
        metas = [s.metainfo for s in batch_data_samples]
        with torch.no_grad():
            kept = odam_nms_detections(adapter, adapter.forward_features(x, metas))
        return odam_nms_results(kept, metas, self.test_cfg.nms, rescale)


class OdamNMSRoIMixin:
    """Odam-NMS in a two-stage RoI head's ``predict_bbox`` (``context``: what HTC / SCNet
    pass it besides the RoIs)."""
    odam_mixin = True

    def predict_bbox(self, x, batch_img_metas, rpn_results_list, rcnn_test_cfg,
                     rescale: bool = False, **context):
        if not is_odam_nms(rcnn_test_cfg) or sum(len(r) for r in rpn_results_list) == 0:
            return super().predict_bbox(x, batch_img_metas, rpn_results_list,
                                        plain_nms_config(rcnn_test_cfg), rescale=rescale,
                                        **context)
        adapter = head_adapter(self)  # (mmdet passes the RoI head's own test_cfg)
        features = adapter.check_features(odam_nms_settings(rcnn_test_cfg.nms).features)
        kept = odam_nms_detections(adapter, adapter.forward_rois(
            x, rpn_results_list, batch_img_metas, features, context))
        return odam_nms_results(kept, batch_img_metas, rcnn_test_cfg.nms, rescale)
