"""``explain_detector``: mmdet's ``inference_detector`` plus a heat map per detection."""
from __future__ import annotations

import contextlib

import torch
from mmengine.structures import InstanceData

from odamtrain.explain import (
    ExplanationSettings,
    dhsic_target_maps,
    drise_target_maps,
    normalize_maps,
    require_prompts,
    vps_target_maps,
)
from odamtrain.inference import prepare_batch

from .gradients import explain_gradients

__all__ = ['explain_detector', 'explain_batch']

BLACK_BOX = {'drise': drise_target_maps, 'dhsic': dhsic_target_maps, 'vps': vps_target_maps}


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def explain_batch(model, inputs: torch.Tensor, data_samples: list,
                  settings: ExplanationSettings | dict | None = None,
                  targets: list | None = None, choose=None, verify: bool = False,
                  **overrides) -> list:
    """Detections and heat maps for a preprocessed batch (``model.data_preprocessor`` output).

    Args:
        model: an mmdet detector.
        inputs: (B, 3, H_in, W_in) the data preprocessor's output.
        data_samples: B ``DetDataSample`` with the image metainfo.
        settings: an :class:`~odamtrain.explain.ExplanationSettings` (or its fields as a
            dict).
        targets: None (explain mmdet's detections) or per image an InstanceData with
            ``bboxes`` (T, 4) x1y1x2y2 original pixels and ``labels`` (T,), e.g. GT objects
            the detector missed or misclassified. The gradient methods then explain, for
            each target, the prediction before score threshold and NMS that finds it best
            (:func:`odamtrain.structures.best_candidates`: its box and its score for the
            target's class are returned); D-RISE, D-HSIC and VPS explain the targets themselves
            (``scores`` are then 0).
        choose: instead of ``targets``, what to explain picked from each image's
            detections of the same forward: ``choose(image_index, detections)`` returns
            (det_index (K,) int64, targets InstanceData or None); the image's result is then
            those K detections followed by the T targets' rows (explained as ``targets``
            are). The audit picks its objects this way.
        verify: (gradient methods) check first that the detections explained are the
            model's own ``predict`` (:func:`odamtrain.apis.verify_detections`).
        **overrides: fields of the settings as keywords (``method='gradcam'``), checked
            before any work.

    Returns:
        list: per image an InstanceData with ``bboxes`` (N, 4) x1y1x2y2 original pixels,
        ``scores`` (N,), ``labels`` (N,) and ``heatmaps`` (N, H, W) float >= 0, normalised
        as the settings say.

    Raises:
        UnsupportedDetectorError: for a detector no adapter reproduces (gradient methods).
        DetectionMismatchError: if ``verify`` finds other detections than mmdet's.
    """
    settings = ExplanationSettings.build(settings, **overrides)
    require_prompts(model, data_samples)
    if targets is not None and len(targets) != len(data_samples):
        raise ValueError(f'targets: expected one InstanceData per image '
                         f'({len(data_samples)}), got {len(targets)}')
    if targets is not None and choose is not None:
        raise ValueError('explain_batch: give targets or choose, not both')
    with _eval_mode(model):
        if settings.method in BLACK_BOX:
            dets = _explain_black_box(model, inputs, data_samples, settings, targets, choose)
        else:
            with torch.no_grad():  # the gradient steps enable grad where they need it
                dets = explain_gradients(model, inputs, data_samples, settings, targets,
                                         choose, verify)
    for det in dets:  # the maps are ours: normalise in place
        det.heatmaps = normalize_maps(det.heatmaps.detach(), settings.normalize, inplace=True)
    return dets


def _explain_black_box(model, inputs, data_samples, settings, targets, choose):
    """mmdet's detections (or the ``targets``, or what ``choose`` picks) of each image with
    their D-RISE / D-HSIC / VPS maps (any mmdet detector: only ``model.predict`` is used)."""
    if targets is None:
        with torch.no_grad():
            targets = [r.pred_instances for r in model.predict(inputs, data_samples)]
        if choose is not None:
            targets = [_chosen_targets(i, det, choose) for i, det in enumerate(targets)]
    method = settings.method
    dets = []
    for i, (tgt, sample) in enumerate(zip(targets, data_samples)):
        det = tgt.clone()
        if 'scores' not in det:
            det.scores = det.bboxes.new_zeros(len(det))
        det.heatmaps = BLACK_BOX[method](model, inputs[i:i + 1], sample.metainfo, det.bboxes,
                                         det.labels, settings.map_size,
                                         getattr(settings, method))
        dets.append(det)
    return dets


def _chosen_targets(i: int, det, choose):
    """The detections ``choose`` picks (with their scores) followed by its extra targets
    (score 0), as the targets of a black-box method."""
    index, extra = choose(i, det)
    rows = det[index.to(det.labels.device)]
    rows = InstanceData(bboxes=rows.bboxes, labels=rows.labels, scores=rows.scores)
    if extra is None or not len(extra):
        return rows
    return InstanceData.cat([rows, InstanceData(
        bboxes=extra.bboxes.to(rows.bboxes), labels=extra.labels.to(rows.labels),
        scores=rows.scores.new_zeros(len(extra)))])


def explain_detector(model, imgs, settings: ExplanationSettings | dict | None = None,
                     test_pipeline=None, verify: bool = True, text=None, **overrides):
    """Detect and explain every detection, like ``mmdet.apis.inference_detector``.

    Args:
        model: an mmdet detector (e.g. from ``mmdet.apis.init_detector``) whose head has an
            adapter (:func:`odamtrain.explain.supported_heads`; D-RISE, D-HSIC and VPS take
            any).
        imgs: image path(s) or BGR ``np.ndarray`` (s).
        settings: an :class:`~odamtrain.explain.ExplanationSettings`, or its fields as a dict.
        test_pipeline: the test pipeline (default: the model's config's).
        verify: check on the first image that the explained detections are the model's own
            (``explain_batch``'s ``verify``).
        text: the prompt of a grounding detector (Grounding DINO), e.g. 'person . bicycle'
            or ['person', 'bicycle'], the same for every image (None: none, or what the test
            pipeline packs).
        **overrides: fields of the settings as keywords, e.g. ``method='odam',
            target='score', mode='fast'``, checked before any work.

    Returns:
        DetDataSample (or a list for a list of images) whose ``pred_instances`` hold mmdet's
        ``bboxes`` (N, 4) x1y1x2y2 original pixels, ``scores``, ``labels`` and ``heatmaps``
        (N, H, W) at the original image size (or ``map_size``); (0, H, W) when nothing is
        detected.

    Raises:
        UnsupportedDetectorError: for a detector no adapter reproduces (gradient methods).
        DetectionMismatchError: if ``verify`` finds other detections than mmdet's.
    """
    settings = ExplanationSettings.build(settings, **overrides)
    is_batch = isinstance(imgs, (list, tuple))
    results = []
    for i, img in enumerate(list(imgs) if is_batch else [imgs]):
        inputs, samples = prepare_batch(model, img, test_pipeline, text)
        det, = explain_batch(model, inputs, samples, settings, verify=verify and i == 0)
        samples[0].pred_instances = det
        results.append(samples[0])
    return results if is_batch else results[0]
