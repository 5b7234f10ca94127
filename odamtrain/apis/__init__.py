from .batch import pixel_to_input, predict_fn, prepare_batch, prepare_train_batch
from .explain import METHODS, explain_batch, explain_detector

__all__ = ['explain_detector', 'explain_batch', 'prepare_batch', 'prepare_train_batch',
           'predict_fn', 'pixel_to_input', 'METHODS']
