"""``explain_detector``: mmdet's ``inference_detector`` plus a heat map per detection."""
from __future__ import annotations

import contextlib

import torch

from odamtrain.explain.dense_explainer import explain_dense_detector
from odamtrain.explain.drise import drise_target_maps
from odamtrain.explain.heatmap import normalize_maps
from odamtrain.explain.roi_explainer import explain_roi_detector
from odamtrain.explain.vps import vps_target_maps

from .batch import prepare_batch

__all__ = ['explain_detector', 'explain_batch', 'METHODS']

METHODS = ('odam', 'gradcam', 'gradcampp', 'drise', 'vps')
BLACK_BOX = {'drise': drise_target_maps, 'vps': vps_target_maps}


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def explain_batch(model, inputs: torch.Tensor, data_samples: list, method: str = 'odam',
                  target: str = 'score', smooth: str | None = 'gaussian',
                  normalize: str | None = 'minmax', mode: str = 'fast',
                  map_size='image', rcnn_features: str = 'roi',
                  drise: dict | None = None, vps: dict | None = None,
                  targets: list | None = None) -> list:
    """Detections and heat maps for a preprocessed batch (``model.data_preprocessor``
    output). Returns per image an InstanceData with ``bboxes`` (N, 4) x1y1x2y2 original
    pixels, ``scores`` (N,), ``labels`` (N,) and ``heatmaps`` (N, H, W) float >= 0.

    Args:
        targets: None (explain mmdet's detections) or per image an InstanceData with
            ``bboxes`` (T, 4) x1y1x2y2 original pixels and ``labels`` (T,), e.g. GT objects
            the detector missed or misclassified. The gradient methods then explain, for
            each target, the prediction before score threshold and NMS that finds it best
            (:func:`odamtrain.evaluation.functional.best_candidates`: its box and its score
            for the target's class are returned); D-RISE and VPS explain the targets
            themselves (``scores`` are then 0).
        drise / vps: settings of the black-box methods (``target``, ``smooth``, ``mode`` do
            not apply): :func:`odamtrain.explain.drise_target_maps` (num_masks 5000, grid 16,
            keep_prob 0.5, batch_size 32, seed 0) and :func:`odamtrain.explain.
            vps_target_maps` (regions 64, max_steps None, batch_size 32).
    """
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    if targets is not None and len(targets) != len(data_samples):
        raise ValueError(f'targets: expected one InstanceData per image '
                         f'({len(data_samples)}), got {len(targets)}')
    if method in BLACK_BOX:
        with _eval_mode(model):
            dets = _explain_black_box(model, inputs, data_samples, method, map_size, targets,
                                      (drise if method == 'drise' else vps) or {})
    else:
        if smooth not in (None, 'none', 'gaussian'):
            raise ValueError(f"smooth must be 'gaussian' or None, got {smooth!r}")
        smooth = None if smooth == 'none' else smooth
        with _eval_mode(model), torch.no_grad():  # gradient steps enable grad where needed
            if hasattr(model, 'roi_head'):
                dets = explain_roi_detector(model, inputs, data_samples, method, target,
                                            smooth, map_size, rcnn_features, targets)
            elif hasattr(model, 'bbox_head'):
                dets = explain_dense_detector(model, inputs, data_samples, method, target,
                                              smooth, mode, map_size, targets=targets)
            else:
                raise TypeError(f'{type(model).__name__}: expected an mmdet single-stage '
                                '(bbox_head) or two-stage (roi_head) detector')
    for det in dets:  # the maps are ours: normalise in place
        det.heatmaps = normalize_maps(det.heatmaps.detach(), normalize, inplace=True)
    return dets


def _explain_black_box(model, inputs, data_samples, method, map_size, targets, settings):
    """mmdet's detections (or the ``targets``) of each image with their D-RISE / VPS maps
    (any mmdet detector: only ``model.predict`` is used)."""
    if targets is None:
        with torch.no_grad():
            targets = [r.pred_instances for r in model.predict(inputs, data_samples)]
    dets = []
    for i, (tgt, sample) in enumerate(zip(targets, data_samples)):
        det = tgt.clone()
        if 'scores' not in det:
            det.scores = det.bboxes.new_zeros(len(det))
        det.heatmaps = BLACK_BOX[method](model, inputs[i:i + 1], sample.metainfo, det.bboxes,
                                         det.labels, map_size, **settings)
        dets.append(det)
    return dets


def explain_detector(model, imgs, method: str = 'odam', target: str = 'score',
                     smooth: str | None = 'gaussian', normalize: str | None = 'minmax',
                     mode: str = 'fast', rcnn_features: str = 'roi', test_pipeline=None,
                     drise: dict | None = None, vps: dict | None = None):
    """Detect and explain every detection, like ``mmdet.apis.inference_detector``.

    Args:
        model: an mmdet FCOS-like single-stage or Faster R-CNN-like two-stage detector
            (e.g. from ``mmdet.apis.init_detector``).
        imgs: image path(s) or BGR ``np.ndarray``(s).
        method: 'odam' (default), 'gradcam' or 'gradcampp' (instance Grad-CAM baselines
            from the same gradients), 'drise' / 'vps' (D-RISE / VPS, black box; settings in
            ``drise`` / ``vps``).
        target: explained attribute: 'score', 'logit', 'x1', 'y1', 'x2' or 'y2'.
        smooth: ODAM's Phi: 'gaussian' (paper; width follows the box) or None (authors'
            public code, no smoothing).
        normalize: 'minmax' (pictures), 'l2' (correlations) or None.
        mode: 'fast' (windowed gradients, GN statistics held constant) or 'exact' (FCOS).
        rcnn_features: two-stage detectors: 'roi' (A = RoI features, the paper) or 'fpn'
            (A = the RoI's FPN level through RoIAlign's backward, for comparison).
    Returns:
        DetDataSample (or a list for a list of images) whose ``pred_instances`` hold mmdet's
        ``bboxes``, ``scores``, ``labels`` and ``heatmaps`` (N, H, W) at the original image
        size; (0, H, W) when nothing is detected.
    """
    is_batch = isinstance(imgs, (list, tuple))
    imgs = list(imgs) if is_batch else [imgs]
    results = []
    for img in imgs:
        inputs, samples = prepare_batch(model, img, test_pipeline)
        det, = explain_batch(model, inputs, samples, method, target, smooth, normalize, mode,
                             rcnn_features=rcnn_features, drise=drise, vps=vps)
        sample = samples[0]
        sample.pred_instances = det
        results.append(sample)
    return results if is_batch else results[0]
