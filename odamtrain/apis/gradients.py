"""The predictions of any covered detector and their gradient heat maps (ODAM, Grad-CAM,
Grad-CAM++), all computed in batch from one forward through the detector's adapter; and the
self-check that the explained detections are mmdet's own."""
from __future__ import annotations

import torch
from mmengine.structures import InstanceData

from odamtrain.explain import (
    GRADIENT_METHODS,
    ExplanationSettings,
    UnsupportedDetectorError,
    build_adapter,
)
from odamtrain.models import is_odam_nms, odam_nms_detections, plain_nms_config
from odamtrain.structures import target_predictions

__all__ = ['explain_gradients', 'chosen_rows', 'detections', 'verify_detections',
           'DetectionMismatchError']


class DetectionMismatchError(UnsupportedDetectorError):
    """The detections an adapter reproduces differ from the detector's own ``predict``."""


def detections(adapter, fwd) -> list:
    """The detector's detections of the forward, as its own ``predict`` makes them: Odam-NMS's
    where its test config asks for it, mmdet's post-processing otherwise."""
    cfg = adapter.test_cfg
    if is_odam_nms(cfg):
        return odam_nms_detections(adapter, fwd)
    return adapter.predictions(fwd, None if cfg is None else plain_nms_config(cfg))


def verify_detections(model, inputs: torch.Tensor, data_samples: list, dets: list,
                      atol: float = 1e-3) -> None:
    """Check that ``dets`` are what ``model.predict`` gives for the same inputs: the same
    number, labels and order, boxes and scores to ``atol`` (relative 1e-4).

    Args:
        model: an mmdet detector.
        inputs: (B, 3, H_in, W_in) the data preprocessor's output.
        data_samples: B ``DetDataSample`` with the image metainfo.
        dets: per image an InstanceData with ``bboxes`` (N, 4) x1y1x2y2 original pixels,
            ``labels`` (N,) and ``scores`` (N,).
        atol: absolute tolerance of boxes and scores.

    Raises:
        DetectionMismatchError: naming the detector and the first difference.
    """
    with torch.no_grad():
        own = [s.pred_instances for s in model.predict(inputs, data_samples)]
    for i, (ours, ref) in enumerate(zip(dets, own)):
        problem = None
        if len(ours) != len(ref):
            problem = f'{len(ours)} detections, its predict gives {len(ref)}'
        elif not torch.equal(ours.labels, ref.labels.to(ours.labels)):  # (CrowdDet: floats)
            problem = 'other labels (or another order)'
        else:
            for key in ('bboxes', 'scores'):
                a, b = ours.get(key).float(), ref.get(key).to(ours.get(key)).float()
                if not torch.allclose(a, b, atol=atol, rtol=1e-4):
                    problem = (f'{key} up to {float((a - b).abs().max()):.4g} apart')
                    break
        if problem is not None:
            raise DetectionMismatchError(
                f'{type(model).__name__}: the explained detections of image {i} are not its '
                f'own ({problem}); odamtrain does not reproduce this detector exactly, so it '
                'explains none of it (please report it with the config)')


def chosen_rows(dets: list, choose, every_prediction) -> list:
    """Per image the rows ``choose`` picks (see :func:`explain_gradients`): the chosen
    detections, then the predictions that best find its extra targets.

    Args:
        dets: per image the detector's detections (InstanceData).
        choose: (image index, detections) -> (det_index (K,) int64, targets InstanceData
            with ``bboxes`` (T, 4) original pixels and ``labels`` (T,), or None).
        every_prediction: () -> per image every prediction (called once, only if some
            image has targets).
    """
    out, every = [], None
    for i, det in enumerate(dets):
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
                      choose=None, verify: bool = False) -> list:
    """The detector's detections (or, with ``targets``, the predictions that best find them)
    of a preprocessed batch and their gradient heat maps, unnormalised: one forward through
    the detector's adapter (:func:`odamtrain.explain.build_adapter`), then the maps of every
    explained prediction in batch.

    Args:
        model: an mmdet detector.
        inputs: (B, 3, H_in, W_in) the data preprocessor's output.
        data_samples: B ``DetDataSample`` with the image metainfo.
        settings: a gradient method's :class:`ExplanationSettings`.
        targets: None or per image an InstanceData (``bboxes`` (T, 4) original pixels,
            ``labels`` (T,)): each is explained by the prediction, before score threshold
            and NMS, that finds it best (:func:`odamtrain.structures.best_candidates`).
        choose: instead of ``targets``, a function of each image's detections that picks
            what to explain from the same forward (:func:`chosen_rows`): some detections
            and extra targets (e.g. the audit's matched detections and missed GT objects).
        verify: first check that the detections are ``model.predict``'s
            (:func:`verify_detections`).

    Returns:
        list: per image an InstanceData: ``bboxes`` (N, 4) x1y1x2y2 original pixels,
        ``scores``, ``labels``, provenance fields and ``heatmaps`` (N, H, W) >= 0 at
        ``map_size``. A model whose test-time NMS is ``odam_nms`` gives its Odam-NMS
        detections.

    Raises:
        UnsupportedDetectorError: before any work, for a detector no adapter reproduces.
        DetectionMismatchError: if ``verify`` finds other detections.
    """
    if settings.method not in GRADIENT_METHODS:
        raise ValueError(f'explain_gradients: method must be one of {GRADIENT_METHODS}, got '
                         f'{settings.method!r}')
    if targets is not None and choose is not None:
        raise ValueError('explain_gradients: give targets or choose, not both')
    adapter = build_adapter(model)
    adapter.check_target(settings.target)
    adapter.explain_mode(settings.mode)
    fwd = adapter.forward(inputs, data_samples, settings.features)
    dets = None
    if targets is None or verify:
        dets = detections(adapter, fwd)
        if verify:
            verify_detections(model, inputs, data_samples, dets)
    if targets is not None:
        dets = [target_predictions(every, tgt)
                for every, tgt in zip(adapter.every_prediction(fwd), targets)]
    elif choose is not None:
        dets = chosen_rows(dets, choose, lambda: adapter.every_prediction(fwd))
    adapter.heatmaps(fwd, dets, settings)
    return dets
