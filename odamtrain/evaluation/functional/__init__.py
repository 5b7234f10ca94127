from .crowd_recall import crowd_mask, set_recalls

__all__ = ['crowd_mask', 'set_recalls']
