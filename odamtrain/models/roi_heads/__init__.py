from .odam_roi_head import OdamRoIHead

__all__ = ['OdamRoIHead']
