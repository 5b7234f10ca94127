from .explain import METHODS, explain_batch, explain_detector, prepare_batch

__all__ = ['explain_detector', 'explain_batch', 'prepare_batch', 'METHODS']
