"""Explanations of detections: ODAM and instance Grad-CAM / Grad-CAM++ (gradients), D-RISE
and VPS (black box)."""
from .dense import TARGETS
from .dense_explainer import explain_dense_detector
from .drise import drise_saliency, explain_drise_detector
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
from .vps import explain_vps_detector, vps_saliency

__all__ = ['TARGETS', 'explain_dense_detector', 'explain_roi_detector', 'box_sigma',
           'gaussian_smooth', 'odam_heatmap', 'gradcam_weights', 'gradcam_pp_weights',
           'channel_weighted_map', 'explanation_maps', 'normalize_maps', 'resize_maps',
           'paste_roi_maps', 'resample_maps', 'drise_saliency', 'explain_drise_detector',
           'vps_saliency', 'explain_vps_detector']
