from .odam_fcos_head import OdamFCOSHead

__all__ = ['OdamFCOSHead']
