"""Explanations of detections: ODAM and instance Grad-CAM / Grad-CAM++ (gradients), D-RISE
and VPS (black box)."""
from .dense import TARGETS
from .dense_explainer import explain_dense_detector
from .drise import drise_saliency, drise_target_maps
from .heatmap import (
    box_sigma,
    channel_weighted_map,
    explanation_maps,
    gaussian_smooth,
    gradcam_pp_weights,
    gradcam_weights,
    normalize_maps,
    odam_heatmap,
    resample_maps,
    resize_maps,
)
from .roi_explainer import explain_roi_detector, paste_roi_maps
from .vps import vps_forward_count, vps_saliency, vps_target_maps

__all__ = ['TARGETS', 'explain_dense_detector', 'explain_roi_detector', 'box_sigma',
           'gaussian_smooth', 'odam_heatmap', 'gradcam_weights', 'gradcam_pp_weights',
           'channel_weighted_map', 'explanation_maps', 'normalize_maps', 'resize_maps',
           'paste_roi_maps', 'resample_maps', 'drise_saliency', 'drise_target_maps',
           'vps_forward_count', 'vps_saliency', 'vps_target_maps']
