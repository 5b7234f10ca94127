"""Odam-NMS and Odam-Train for every covered mmdet detector: each paper concept in one
module (:mod:`.odam_nms`, :mod:`.odam_train`), switched on from the config
(:mod:`.install`)."""
from .install import asks_for_odam, install_odam, register_odam_builds
from .odam_nms import (
    MAP_KEYS,
    batched_odam_nms,
    box_iou,
    is_odam_nms,
    map_vectors,
    odam_nms,
    odam_nms_candidates,
    odam_nms_detections,
    odam_nms_keep,
    odam_nms_results,
    odam_nms_select,
    plain_nms_config,
    without_odam_keys,
)
from .odam_train import (
    OdamLossSettings,
    OdamPairLosses,
    best_per_object,
    cap_positives,
    odam_loss_dict,
    odam_pair_losses,
    odam_train_losses,
    top_per_object,
)

__all__ = ['install_odam', 'register_odam_builds', 'asks_for_odam', 'odam_nms',
           'batched_odam_nms', 'box_iou', 'map_vectors', 'odam_nms_keep', 'MAP_KEYS',
           'without_odam_keys', 'plain_nms_config', 'is_odam_nms', 'odam_nms_candidates',
           'odam_nms_detections', 'odam_nms_select', 'odam_nms_results', 'OdamLossSettings',
           'OdamPairLosses', 'best_per_object', 'cap_positives', 'odam_loss_dict',
           'odam_pair_losses', 'odam_train_losses', 'top_per_object']
