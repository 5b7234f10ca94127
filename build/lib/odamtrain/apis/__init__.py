from mmdet.apis import init_detector  # odamtrain's registry builds install Odam

from odamtrain.explain import METHODS, ExplanationSettings
from odamtrain.inference import pixel_to_input, predict_fn, prepare_batch, prepare_train_batch

from .explain import explain_batch, explain_detector
from .gradients import DetectionMismatchError, explain_gradients, verify_detections

__all__ = ['init_detector', 'explain_detector', 'explain_batch', 'explain_gradients',
           'verify_detections', 'DetectionMismatchError', 'ExplanationSettings',
           'prepare_batch', 'prepare_train_batch', 'predict_fn', 'pixel_to_input', 'METHODS']
