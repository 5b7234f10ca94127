"""Detector input / output: images -> preprocessed batches, black-box predictions."""
from .batch import (
    image_window,
    input_to_rgb,
    pixel_to_input,
    plain_nms,
    predict_fn,
    prepare_batch,
    prepare_train_batch,
)

__all__ = ['prepare_batch', 'prepare_train_batch', 'predict_fn', 'pixel_to_input',
           'input_to_rgb', 'plain_nms', 'image_window']
