"""Images -> the preprocessed batches a detector takes (inference and training), and the
detector as a black box (images -> detections)."""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
from mmcv.transforms import Compose
from mmdet.structures import DetDataSample
from mmdet.utils import get_test_pipeline_cfg

__all__ = ['prepare_batch', 'prepare_train_batch', 'predict_fn', 'pixel_to_input',
           'input_to_rgb', 'plain_nms', 'image_window']


def _test_pipeline(model, img, with_annotations: bool) -> Compose:
    cfg = copy.deepcopy(get_test_pipeline_cfg(model.cfg))  # (.copy() is shallow)
    if not with_annotations:
        cfg = [t for t in cfg if 'LoadAnnotations' not in t['type']]  # no GT at inference
    if isinstance(img, np.ndarray):
        cfg[0] = dict(cfg[0], type='mmdet.LoadImageFromNDArray')
    return Compose(cfg)


def _source(img, img_id: int) -> dict:
    return (dict(img=img, img_id=img_id) if isinstance(img, np.ndarray)
            else dict(img_path=img, img_id=img_id))


def prepare_batch(model, img, test_pipeline=None, text=None):
    """One image through the model's test pipeline (without annotation loading) and data
    preprocessor.

    Args:
        model: an mmdet detector.
        img: an image path or a BGR ``np.ndarray`` (H, W, 3).
        test_pipeline: the pipeline config (default: the model's config's test pipeline).
        text: the prompt of a grounding detector (class names separated by ' . ', or a list
            of names): the sample's ``text`` with ``custom_entities=True``, as mmdet's
            ``inference_detector(text_prompt=..., custom_entities=True)`` gives it; None: no
            prompt.

    Returns:
        tuple: ``(inputs, data_samples)``: inputs (1, 3, H_in, W_in), a list of one
        ``DetDataSample``.
    """
    pipeline = test_pipeline or _test_pipeline(model, img, with_annotations=False)
    source = _source(img, 0)
    if text is not None:
        source.update(text=text, custom_entities=True)
    data = pipeline(source)
    if text is not None:  # (a pipeline whose PackDetInputs does not pack them)
        data['data_samples'].set_metainfo(dict(text=text, custom_entities=True))
    batch = model.data_preprocessor(dict(inputs=[data['inputs']],
                                         data_samples=[data['data_samples']]), False)
    return batch['inputs'], batch['data_samples']


def prepare_train_batch(model, imgs: list, gt_bboxes: list, gt_labels: list | None = None):
    """Images with their GT through the model's test pipeline (resize, no augmentation) and
    its data preprocessor in training mode: what ``model.loss`` takes.

    Args:
        model: an mmdet detector.
        imgs: B image paths or BGR arrays (one size transform: the test pipeline's).
        gt_bboxes: B arrays (n_i, 4) x1y1x2y2 in original pixels.
        gt_labels: B arrays (n_i,) class indices (default all 0).

    Returns:
        tuple: ``(inputs, data_samples)``: inputs (B, 3, H_in, W_in), B ``DetDataSample``
        with ``gt_instances``.
    """
    pipeline = _test_pipeline(model, imgs[0], with_annotations=True)
    datas = []
    for i, (img, boxes) in enumerate(zip(imgs, gt_bboxes)):
        labels = np.zeros(len(boxes), int) if gt_labels is None else gt_labels[i]
        src = _source(img, i)
        src['instances'] = [dict(bbox=[float(v) for v in box], bbox_label=int(label),
                                 ignore_flag=0) for box, label in zip(boxes, labels)]
        datas.append(pipeline(src))
    batch = model.data_preprocessor(dict(inputs=[d['inputs'] for d in datas],
                                         data_samples=[d['data_samples'] for d in datas]),
                                    True)
    return batch['inputs'], batch['data_samples']


def predict_fn(model, metainfo: dict):
    """A black-box predictor for images preprocessed like the image of ``metainfo`` (the
    black-box explainers and the deletion metrics).

    A model whose test-time NMS is Odam-NMS runs these forwards with plain NMS at the same
    IoU threshold: the callers take the best match of a target over all detections, which
    barely depends on the duplicates NMS removes, and Odam-NMS would explain every candidate
    of every perturbed image (hundreds of times the cost).

    Args:
        model: an mmdet detector.
        metainfo: the ``DetDataSample`` metainfo of the image (sizes, scale factor).

    Returns:
        callable: images (b, 3, H_in, W_in) -> b tuples (boxes (D, 4) x1y1x2y2 original
        pixels, labels (D,), scores (D,)), by ``model.predict`` in one batch.
    """
    def predict(images):
        with torch.no_grad(), plain_nms(model):
            out = model.predict(images, [DetDataSample(metainfo=metainfo) for _ in images])
        return [(o.pred_instances.bboxes, o.pred_instances.labels, o.pred_instances.scores)
                for o in out]
    return predict


@contextlib.contextmanager
def plain_nms(model):
    """Context manager: inside, a test-time ``odam_nms`` of the model is mmdet's ``nms`` (same
    IoU).

    Args:
        model: an mmdet detector.

    Yields:
        None.
    """
    head = model.roi_head if hasattr(model, 'roi_head') else getattr(model, 'bbox_head', None)
    cfg = getattr(head, 'test_cfg', None)
    nms = cfg.get('nms') if cfg else None
    if not nms or nms.get('type') != 'odam_nms':
        yield
        return
    cfg.nms = dict(type='nms', iou_threshold=nms.get('iou_threshold', 0.5))
    try:
        yield
    finally:
        cfg.nms = nms


def input_to_rgb(model, inputs: torch.Tensor) -> torch.Tensor:
    """Network input -> RGB pixels (the inverse of the data preprocessor's normalisation and
    channel order), e.g. for superpixels.

    Args:
        model: an mmdet detector.
        inputs: (3, H, W) network input.

    Returns:
        Tensor: (H, W, 3) uint8 RGB.
    """
    prep = model.data_preprocessor
    pixels = inputs
    if getattr(prep, '_enable_normalize', False):
        pixels = pixels * prep.std.reshape(3, 1, 1) + prep.mean.reshape(3, 1, 1)
    if not getattr(prep, '_channel_conversion', False):  # mmdet loads BGR
        pixels = pixels.flip(0)
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)


def image_window(meta: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where the image lies in the network input. mmdet's pipelines put the (resized) image at
    the top-left, ``img_shape`` big, padding right and below; CenterNet's test-time
    ``RandomCenterCropPad`` pastes it into a larger canvas (then ``img_shape``) at an offset
    it records as ``border`` (top, bottom, left, right).

    Args:
        meta: a ``DetDataSample``'s metainfo.

    Returns:
        tuple: ``((top, left), (h, w))`` in input pixels.
    """
    if meta.get('border') is not None:
        top, bottom, left, right = (int(round(float(v))) for v in meta['border'][:4])
        return (top, left), (bottom - top, right - left)
    h, w = meta['img_shape'][:2]
    return (0, 0), (int(h), int(w))


def pixel_to_input(model, pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values -> what the model takes after its data preprocessor's normalisation (e.g.
    black = -mean / std).

    Args:
        model: an mmdet detector.
        pixels: (3, ...) values in 0..255 in the model's channel order.

    Returns:
        Tensor: the same shape, normalised.
    """
    prep = model.data_preprocessor
    if not getattr(prep, '_enable_normalize', False):
        return pixels
    shape = (3,) + (1,) * (pixels.dim() - 1)
    return (pixels - prep.mean.reshape(shape)) / prep.std.reshape(shape)
