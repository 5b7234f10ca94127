from .dense_heads import OdamFCOSHead
from .roi_heads import OdamRoIHead

__all__ = ['OdamFCOSHead', 'OdamRoIHead']
