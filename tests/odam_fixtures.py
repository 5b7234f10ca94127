"""Tiny random-init detectors and inputs for the explanation tests."""
import numpy as np
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

from odamtrain.datasets import render_scene
from odamtrain.inference import prepare_batch, prepare_train_batch
from odamtrain.models import install_odam

from .conftest import REPO, TEST_DEVICE


def build_detector(config: str, num_classes: int = 1, seed: int = 0, cfg_options=None):
    """A model from one of our configs, random init, eval mode, on the tests' device,
    keeping low-score detections (score_thr 0) so that a random model detects something;
    Odam-NMS / Odam-Train installed where the config asks (as OdamRunner builds it)."""
    register_all_modules()
    cfg = Config.fromfile(f'{REPO}/{config}')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'roi_head' in cfg.model:
        cfg.model.roi_head.bbox_head.num_classes = num_classes
        cfg.model.test_cfg.rcnn.update(score_thr=0.0, max_per_img=30)
        cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=40)
    else:
        cfg.model.bbox_head.num_classes = num_classes
        cfg.model.test_cfg.update(score_thr=0.0, nms_pre=60, max_per_img=30)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.cfg = cfg
    return install_odam(model).to(TEST_DEVICE).eval()


def scene(seed: int = 0) -> np.ndarray:
    img, _ = render_scene(np.random.default_rng([seed, 9, 9]))
    return img


def image_batch(model, seed: int = 0):
    """(inputs, data_samples) of one synthetic scene through the model's test pipeline."""
    return prepare_batch(model, scene(seed))


def train_batch(model, seeds=(0, 1)):
    """(inputs, data_samples with gt_instances) of synthetic scenes (full boxes, class 0)."""
    imgs, boxes = [], []
    for seed in seeds:
        img, gtboxes = render_scene(np.random.default_rng([seed, 9, 9]))
        imgs.append(img)
        boxes.append(np.array([[x, y, x + w, y + h] for x, y, w, h in
                               (g['fbox'] for g in gtboxes)], np.float32))
    return prepare_train_batch(model, imgs, boxes)
