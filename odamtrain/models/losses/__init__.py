from .odam_train_loss import (
    OdamPairLosses,
    best_per_object,
    cap_positives,
    odam_loss_config,
    odam_loss_dict,
    odam_pair_losses,
    top_per_object,
)

__all__ = ['OdamPairLosses', 'best_per_object', 'cap_positives', 'odam_loss_config',
           'odam_loss_dict', 'odam_pair_losses', 'top_per_object']
