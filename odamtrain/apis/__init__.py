from .explain import METHODS, explain_batch, explain_detector

__all__ = ['explain_detector', 'explain_batch', 'METHODS']
