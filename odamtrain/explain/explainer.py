"""The predictions of any covered detector and their gradient heat maps (ODAM, Grad-CAM,
Grad-CAM++), all computed in batch from one forward; and the candidates Odam-NMS compares,
written once for every family."""
from __future__ import annotations

import torch
from mmengine.logging import print_log
from mmengine.structures import InstanceData

from odamtrain.ops import is_odam_nms, odam_nms_keep, plain_nms_config
from odamtrain.structures import target_predictions

from .adapters import DenseHeadAdapter, DETRAdapter, build_adapter
from .dense_gradients import dense_forward, level_maps, level_mode, log_fallback
from .detr_gradients import detr_heatmaps
from .heatmap import output_size, resize_maps
from .roi_gradients import fpn_heatmaps, roi_heatmaps
from .settings import GRADIENT_METHODS, ExplanationSettings

__all__ = ['explain_gradients', 'chosen_rows', 'detector_forward', 'dense_heatmaps',
           'odam_nms_candidates', 'odam_nms_select', 'odam_nms_settings', 'nms_config',
           'ODAM_NMS_DEFAULTS']

# Odam-NMS's maps: the class logit (the paper), short edge 50, 'fast' gradients
ODAM_NMS_DEFAULTS = dict(target='logit', mode='fast', map_size=50)
# Predictions of one level per vectorised step (bounds memory); maps resized at a time
CHUNK = 256
RESIZE_CHUNK = 32


def nms_config(adapter) -> tuple:
    """(the test config whose ``nms`` the detections go through, its NMS config):
    the dense head's ``test_cfg`` or the RoI head's ``rcnn`` test config."""
    cfg = (adapter.head.test_cfg if isinstance(adapter, DenseHeadAdapter)
           else adapter.roi_head.test_cfg)
    return cfg, (cfg or {}).get('nms') or {}


def dense_heatmaps(adapter, fwd, dets: list, settings: ExplanationSettings) -> None:
    """Set ``heatmaps`` (N, H, W) at the settings' ``map_size`` on each image's predictions
    (``img``, ``level``, ``prior``, ``labels``, ``bboxes`` original pixels) of a dense
    head."""
    scale = torch.tensor([m['scale_factor'][:2] for m in fwd.metas], dtype=fwd.feats[0].dtype,
                         device=fwd.feats[0].device)  # [B, 2] input / original (w, h)
    modes = [level_mode(adapter, fwd, level, settings.mode)
             for level in range(len(fwd.feats))]
    # no graph through the maps: it would keep every chunk alive (the gradient functions
    # record what they need themselves)
    with torch.no_grad():
        for det, meta in zip(dets, fwd.metas):
            out_hw = output_size(meta['ori_shape'][:2], settings.map_size)
            preds = InstanceData(**{k: det.get(k) for k in ('img', 'level', 'prior', 'labels',
                                                             'bboxes')})
            heatmaps = fwd.feats[0].new_empty(len(det), *out_hw)  # every row is written
            for level in det.level.unique().tolist():
                idx = (det.level == level).nonzero()[:, 0]
                stride = float(adapter.stride(det.level[idx[:1]], heatmaps)[0])
                for part in idx.split(CHUNK):
                    maps = level_maps(adapter, fwd, level, preds[part], settings,
                                      modes[level], scale)
                    for j in range(0, len(part), RESIZE_CHUNK):  # (n, H, W) temporaries
                        heatmaps[part[j:j + RESIZE_CHUNK]] = resize_maps(
                            maps[j:j + RESIZE_CHUNK], stride, meta['img_shape'][:2], out_hw)
            det.heatmaps = heatmaps


def odam_nms_candidates(adapter, fwd, nms_cfg: dict) -> list:
    """Per image the candidates that reach NMS (dense: after score threshold, ``nms_pre``
    and score factors; two-stage: the (RoI, class) pairs above ``score_thr``; boxes in
    original pixels) with the ODAM ``heatmaps`` Odam-NMS compares (``nms_cfg``'s
    ``target``, ``mode``, ``map_size``; :data:`ODAM_NMS_DEFAULTS`), from the forward
    ``fwd`` that made them."""
    settings = odam_nms_settings(nms_cfg)
    cfg, _ = nms_config(adapter)
    if isinstance(adapter, DenseHeadAdapter):
        cands = adapter.predictions(fwd, plain_nms_config(cfg), with_nms=False)
        dense_heatmaps(adapter, fwd, cands, settings)
    else:
        cands = adapter.candidates(fwd, cfg.score_thr)
        roi_heatmaps(adapter, fwd, cands, settings)
    return cands


def odam_nms_settings(nms_cfg: dict) -> ExplanationSettings:
    """The maps an ``odam_nms`` config asks for: ODAM with the paper's Gaussian Phi, its
    ``target``, ``mode`` and ``map_size`` (:data:`ODAM_NMS_DEFAULTS`), validated."""
    return ExplanationSettings(method='odam', smooth='gaussian', normalize=None, **{
        k: nms_cfg.get(k, v) for k, v in ODAM_NMS_DEFAULTS.items()})


def odam_nms_select(cands: list, nms_cfg: dict, max_per_img: int) -> list:
    """Odam-NMS of each image's candidates (at most ``max_per_img`` kept); the kept
    predictions keep their fields, ``heatmaps`` included."""
    return [cand[odam_nms_keep(cand, nms_cfg, max_per_img)] for cand in cands]


def detector_forward(model, adapter, inputs: torch.Tensor, data_samples: list,
                     features: str = 'auto'):
    """The detector's forward up to its head's outputs, as its adapter's explanations reuse
    it: a :class:`DenseForward` (towers recorded) or, for two-stage detectors, the RPN's
    proposals through the RoI head with A (``features`` 'auto' / 'roi', or 'fpn') as leaves
    (a :class:`RoIForward`)."""
    metas = [s.metainfo for s in data_samples]
    if isinstance(adapter, DenseHeadAdapter):
        if features not in ('auto', 'fpn'):
            raise ValueError(f"{type(adapter.head).__name__}: features must be 'auto' or "
                             f"'fpn' (A = the FPN level), got {features!r}")
        with torch.no_grad():
            return dense_forward(adapter, model.extract_feat(inputs), metas)
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        proposals = model.rpn_head.predict(feats, data_samples, rescale=False)
    return adapter.forward(feats, proposals, metas, 'roi' if features == 'auto' else features)


def chosen_rows(detections: list, choose, every_prediction) -> list:
    """Per image the rows ``choose`` picks (see :func:`explain_gradients`): the chosen
    detections, then the predictions that best find its extra targets.

    Args:
        detections: per image mmdet's detections (InstanceData).
        choose: (image index, detections) -> (det_index (K,) int64, targets InstanceData
            with ``bboxes`` (T, 4) original pixels and ``labels`` (T,), or None).
        every_prediction: () -> per image every prediction (called once, only if some
            image has targets).
    """
    out, every = [], None
    for i, det in enumerate(detections):
        index, targets = choose(i, det)
        rows = det[index.to(det.labels.device)]
        if targets is not None and len(targets):
            every = every_prediction() if every is None else every
            found = target_predictions(every[i], targets)
            keys = [k for k in rows.keys() if k in found]
            rows = InstanceData.cat([InstanceData(**{k: rows.get(k) for k in keys}),
                                     InstanceData(**{k: found.get(k) for k in keys})])
        out.append(rows)
    return out


def explain_gradients(model, inputs: torch.Tensor, data_samples: list,
                      settings: ExplanationSettings, targets: list | None = None,
                      choose=None) -> list:
    """mmdet's detections (or, with ``targets``, the predictions that best find them) of a
    preprocessed batch and their gradient heat maps, unnormalised.

    Args:
        inputs: (B, 3, H_in, W_in) the data preprocessor's output; data_samples: metainfo.
        settings: a gradient method's :class:`ExplanationSettings`.
        targets: None or per image an InstanceData (``bboxes`` (T, 4) original pixels,
            ``labels`` (T,)): each is explained by the prediction, before score threshold
            and NMS, that finds it best (:func:`odamtrain.structures.best_candidates`).
        choose: instead of ``targets``, a function of each image's detections that picks
            what to explain from the same forward (:func:`chosen_rows`): some detections
            and extra targets (e.g. the audit's matched detections and missed GT objects).
    Returns:
        Per image an InstanceData: ``bboxes`` (N, 4) x1y1x2y2 original pixels, ``scores``,
        ``labels``, provenance fields and ``heatmaps`` (N, H, W) >= 0 at ``map_size``.
        A model whose test-time NMS is ``odam_nms`` gives its Odam-NMS detections.
    """
    if settings.method not in GRADIENT_METHODS:
        raise ValueError(f'explain_gradients: method must be one of {GRADIENT_METHODS}, got '
                         f'{settings.method!r}')
    if targets is not None and choose is not None:
        raise ValueError('explain_gradients: give targets or choose, not both')
    adapter = build_adapter(model)
    if isinstance(adapter, DETRAdapter):
        return _explain_detr(adapter, inputs, data_samples, settings, targets, choose)
    s = settings
    cfg, nms = nms_config(adapter)
    dense = isinstance(adapter, DenseHeadAdapter)
    if dense:
        log_fallback(adapter, s.mode)
    fwd = detector_forward(model, adapter, inputs, data_samples, s.features)
    if targets is not None:
        dets = [target_predictions(every, tgt)
                for every, tgt in zip(adapter.every_prediction(fwd), targets)]
    elif is_odam_nms(cfg):
        dets = odam_nms_select(odam_nms_candidates(adapter, fwd, nms), nms,
                               cfg.get('max_per_img', -1))
    else:
        dets = adapter.predictions(fwd, plain_nms_config(cfg))
    if choose is not None:
        dets = chosen_rows(dets, choose, lambda: adapter.every_prediction(fwd))
    if dense:
        dense_heatmaps(adapter, fwd, dets, s)
    else:
        (fpn_heatmaps if s.features == 'fpn' else roi_heatmaps)(adapter, fwd, dets, s)
    return dets


def _explain_detr(adapter, inputs, data_samples, s: ExplanationSettings, targets,
                  choose) -> list:
    """:func:`explain_gradients` for DETR-like detectors (exact: attention is global)."""
    if s.mode != 'exact':
        print_log(f'ODAM: {s.mode} mode does not apply to {type(adapter.model).__name__} '
                  '(every query attends to the whole map); using exact mode',
                  logger='current')
    fwd, mmdet_dets = adapter.forward(inputs, data_samples, s.features)
    if targets is not None:
        dets = [target_predictions(every, tgt)
                for every, tgt in zip(adapter.every_prediction(fwd), targets)]
    else:
        dets = adapter.predictions(fwd, mmdet_dets)
        if choose is not None:
            dets = chosen_rows(dets, choose, lambda: adapter.every_prediction(fwd))
    detr_heatmaps(adapter, fwd, dets, s)
    return dets
