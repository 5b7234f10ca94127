from .odam_nms import batched_odam_nms, box_iou, map_correlation, odam_nms

__all__ = ['odam_nms', 'batched_odam_nms', 'box_iou', 'map_correlation']
