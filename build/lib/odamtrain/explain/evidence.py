"""What the black-box explainers (D-RISE, VPS) read from a detector's output on a perturbed
image: mmdet's final detections, or every prediction before score threshold and NMS."""
from __future__ import annotations

from collections.abc import Callable

import torch
from mmdet.structures import DetDataSample

from odamtrain.inference import predict_fn

from .adapters import build_adapter
from .settings import EVIDENCE_SOURCES

__all__ = ['evidence_fn']


def evidence_fn(model, metainfo: dict, evidence: str = 'detections') -> Callable:
    """A callable: images (b, 3, H, W) preprocessed like the image of ``metainfo`` -> b
    tuples (boxes (D, 4) x1y1x2y2 original pixels, labels (D,), scores (D,)).

    Args:
        evidence: 'detections' (``model.predict``: score threshold, NMS, any mmdet detector)
            or 'candidates' (every prediction of the head before score threshold and NMS,
            each (prior or RoI or query, class) with mmdet's score for that head: the
            authors of VPS score every prior; a detector with an adapter; MS R-CNN: the
            box head's, as mmdet rescores by the mask IoU only what its NMS keeps).
    """
    if evidence not in EVIDENCE_SOURCES:
        raise ValueError(f'evidence must be one of {EVIDENCE_SOURCES}, got {evidence!r}')
    if evidence == 'detections':
        return predict_fn(model, metainfo)
    adapter = build_adapter(model)

    def predict(images):
        samples = [DetDataSample(metainfo=metainfo) for _ in images]
        with torch.no_grad():
            every = adapter.every_prediction(adapter.forward(images, samples))
        return [(e.bboxes.detach(), e.labels, e.scores.detach()) for e in every]
    return predict
