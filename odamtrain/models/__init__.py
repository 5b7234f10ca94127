from .dense_heads import OdamFCOSHead

__all__ = ['OdamFCOSHead']
