from .odam_nms import (
    MAP_KEYS,
    batched_odam_nms,
    box_iou,
    is_odam_nms,
    map_correlation,
    odam_nms,
    odam_nms_keep,
    plain_nms_config,
    without_odam_keys,
)

__all__ = ['odam_nms', 'batched_odam_nms', 'box_iou', 'map_correlation', 'odam_nms_keep',
           'MAP_KEYS', 'without_odam_keys', 'plain_nms_config', 'is_odam_nms']
