"""``explain_detector``: mmdet's ``inference_detector`` plus a heat map per detection."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from mmcv.transforms import Compose
from mmdet.utils import get_test_pipeline_cfg

from odamtrain.explain.dense_explainer import explain_dense_detector
from odamtrain.explain.heatmap import normalize_maps
from odamtrain.explain.roi_explainer import explain_roi_detector

__all__ = ['explain_detector', 'explain_batch', 'prepare_batch', 'METHODS']

METHODS = ('odam', 'gradcam', 'gradcampp')


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
                  map_size='image', rcnn_features: str = 'roi') -> list:
    """Detections and heat maps for a preprocessed batch (``model.data_preprocessor``
    output). Returns per image an InstanceData with ``bboxes`` (N, 4) x1y1x2y2 original
    pixels, ``scores`` (N,), ``labels`` (N,) and ``heatmaps`` (N, H, W) float >= 0."""
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    if smooth not in (None, 'none', 'gaussian'):
        raise ValueError(f"smooth must be 'gaussian' or None, got {smooth!r}")
    smooth = None if smooth == 'none' else smooth
    with _eval_mode(model), torch.no_grad():  # gradient steps enable grad where needed
        if hasattr(model, 'roi_head'):
            dets = explain_roi_detector(model, inputs, data_samples, method, target, smooth,
                                        map_size, rcnn_features)
        elif hasattr(model, 'bbox_head'):
            dets = explain_dense_detector(model, inputs, data_samples, method, target, smooth,
                                          mode, map_size)
        else:
            raise TypeError(f'{type(model).__name__}: expected an mmdet single-stage '
                            '(bbox_head) or two-stage (roi_head) detector')
    for det in dets:  # the maps are ours: normalise in place
        det.heatmaps = normalize_maps(det.heatmaps.detach(), normalize, inplace=True)
    return dets


def prepare_batch(model, img, test_pipeline=None):
    """One image (path or BGR array) through the model's test pipeline (without
    annotation loading) and data preprocessor -> (inputs (1, 3, H, W), [DetDataSample])."""
    if test_pipeline is None:
        cfg = get_test_pipeline_cfg(model.cfg.copy())
        cfg = [t for t in cfg if 'LoadAnnotations' not in t['type']]  # no GT at inference
        if isinstance(img, np.ndarray):
            cfg[0] = dict(cfg[0], type='mmdet.LoadImageFromNDArray')
        test_pipeline = Compose(cfg)
    data = test_pipeline(dict(img=img, img_id=0) if isinstance(img, np.ndarray)
                         else dict(img_path=img, img_id=0))
    batch = model.data_preprocessor(dict(inputs=[data['inputs']],
                                         data_samples=[data['data_samples']]), False)
    return batch['inputs'], batch['data_samples']


def explain_detector(model, imgs, method: str = 'odam', target: str = 'score',
                     smooth: str | None = 'gaussian', normalize: str | None = 'minmax',
                     mode: str = 'fast', rcnn_features: str = 'roi', test_pipeline=None):
    """Detect and explain every detection, like ``mmdet.apis.inference_detector``.

    Args:
        model: an mmdet FCOS-like single-stage or Faster R-CNN-like two-stage detector
            (e.g. from ``mmdet.apis.init_detector``).
        imgs: image path(s) or BGR ``np.ndarray``(s).
        method: 'odam' (default), 'gradcam' or 'gradcampp' (instance Grad-CAM baselines
            from the same gradients).
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
                             rcnn_features=rcnn_features)
        sample = samples[0]
        sample.pred_instances = det
        results.append(sample)
    return results if is_batch else results[0]
