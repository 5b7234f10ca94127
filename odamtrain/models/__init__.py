from .losses import cap_positives, odam_loss_dict, odam_pair_losses
from .odam_heads import OdamDenseHeadMixin, OdamRoIHeadMixin, install_odam, odam_nms_results

__all__ = ['install_odam', 'OdamDenseHeadMixin', 'OdamRoIHeadMixin', 'odam_nms_results',
           'odam_pair_losses', 'odam_loss_dict', 'cap_positives']
