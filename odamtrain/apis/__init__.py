from odamtrain.explain import METHODS, ExplanationSettings
from odamtrain.inference import pixel_to_input, predict_fn, prepare_batch, prepare_train_batch

from .detector import init_detector
from .explain import explain_batch, explain_detector

__all__ = ['init_detector', 'explain_detector', 'explain_batch', 'ExplanationSettings',
           'prepare_batch', 'prepare_train_batch', 'predict_fn', 'pixel_to_input', 'METHODS']
