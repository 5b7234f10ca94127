from .dense_heads import OdamFCOSHead
from .losses import cap_positives, odam_loss_dict, odam_pair_losses
from .roi_heads import OdamRoIHead

__all__ = ['OdamFCOSHead', 'OdamRoIHead', 'odam_pair_losses', 'odam_loss_dict', 'cap_positives']
