"""Explanations of detections: ODAM and instance Grad-CAM / Grad-CAM++ / SSGrad-CAM++
(gradients, through the detector adapters: :mod:`.protocol`, :mod:`.adapters`), D-RISE,
D-HSIC and VPS (black box)."""
from .adapters import (
    DenseTrainStep,
    RoITrainStep,
    build_adapter,
    head_adapter,
    require_prompts,
    supported_heads,
)
from .dhsic import dhsic_saliency, dhsic_target_maps
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
    output_size,
    paste_roi_maps,
    resample_maps,
    resize_maps,
    ssgradcam_pp_weights,
)
from .protocol import DetectorAdapter, Forward, UnsupportedDetectorError
from .settings import (
    DRISE_ESTIMATORS,
    EVIDENCE_SOURCES,
    FEATURES,
    GRADIENT_METHODS,
    METHODS,
    MODES,
    TARGETS,
    VPS_SEARCHES,
    VPS_SEGMENTATIONS,
    DhsicSettings,
    DriseSettings,
    ExplanationSettings,
    VpsSettings,
)
from .vps import vps_forward_count, vps_saliency, vps_target_maps

__all__ = ['ExplanationSettings', 'DriseSettings', 'DhsicSettings', 'VpsSettings', 'METHODS',
           'GRADIENT_METHODS', 'TARGETS', 'MODES', 'FEATURES', 'DRISE_ESTIMATORS',
           'EVIDENCE_SOURCES', 'VPS_SEGMENTATIONS', 'VPS_SEARCHES', 'build_adapter',
           'head_adapter', 'supported_heads', 'require_prompts',
           'UnsupportedDetectorError', 'DetectorAdapter', 'Forward', 'DenseTrainStep',
           'RoITrainStep', 'box_sigma', 'gaussian_smooth',
           'odam_heatmap', 'gradcam_weights', 'gradcam_pp_weights', 'ssgradcam_pp_weights',
           'channel_weighted_map',
           'explanation_maps', 'normalize_maps', 'resize_maps', 'output_size',
           'paste_roi_maps', 'resample_maps', 'drise_saliency', 'drise_target_maps',
           'dhsic_saliency', 'dhsic_target_maps',
           'vps_forward_count', 'vps_saliency', 'vps_target_maps']
