"""Tiny random-init versions of mmdet 3.3 model-zoo detectors (a narrow ResNet-18 or the
configs' own small backbones, 32-channel heads), for the adapter tests."""
import functools
import os
import tempfile

import numpy as np
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.hub import get_config
from transformers import BertConfig, BertModel, BertTokenizer

from odamtrain.inference import prepare_batch

from .conftest import TEST_DEVICE

NARROW_RESNET = dict(
    backbone=dict(type='ResNet', depth=18, base_channels=8, num_stages=4,
                  out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, style='pytorch',
                  norm_cfg=dict(type='BN', requires_grad=True), init_cfg=None),
    neck=dict(in_channels=[8, 16, 32, 64], out_channels=32))

# name -> (mmdet config, the head's overrides); 3 classes, 32 channels
ZOO = {
    'retinanet': ('retinanet/retinanet_r50_fpn_1x_coco.py', dict(feat_channels=32)),
    'atss': ('atss/atss_r50_fpn_1x_coco.py', dict(feat_channels=32)),
    'sabl-retinanet': ('sabl/sabl-retinanet_r50_fpn_1x_coco.py', dict(feat_channels=32)),
    'gfl': ('gfl/gfl_r50_fpn_1x_coco.py', dict(feat_channels=32)),
    'paa': ('paa/paa_r50_fpn_1x_coco.py', dict(feat_channels=32)),
    'paa-novote': ('paa/paa_r50_fpn_1x_coco.py', dict(feat_channels=32, score_voting=False)),
    'lad': ('lad/lad_r50-paa-r101_fpn_2xb8_coco_1x.py', dict(feat_channels=32)),
    'fcos': ('fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', dict(feat_channels=32)),
    'autoassign': ('autoassign/autoassign_r50-caffe_fpn_1x_coco.py', dict(feat_channels=32)),
    'foveabox': ('foveabox/fovea_r50_fpn_4xb4-1x_coco.py', dict(feat_channels=32)),
    'tood': ('tood/tood_r50_fpn_1x_coco.py', dict(feat_channels=32)),
    'rtmdet': ('rtmdet/rtmdet_tiny_8xb32-300e_coco.py', dict(exp_on_reg=True)),
    'rtmdet-ins': ('rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py', dict()),
    'condinst': ('condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py',
                 dict(feat_channels=32)),
    'yolox': ('yolox/yolox_tiny_8xb8-300e_coco.py', dict()),
    'yolov3': ('yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py', dict()),
    'reppoints': ('reppoints/reppoints-moment_r50_fpn_1x_coco.py',
                  dict(feat_channels=32, point_feat_channels=32)),
    'centernet': ('centernet/centernet_r18_8xb16-crop512-140e_coco.py',
                  dict(in_channels=32, feat_channels=32)),
    'faster-rcnn': ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', dict()),
    'mask-rcnn': ('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', dict()),
    'cascade-rcnn': ('cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py', dict()),
    'double-head-rcnn': ('double_heads/dh-faster-rcnn_r50_fpn_1x_coco.py',
                         dict(conv_out_channels=32)),
    'ms-rcnn': ('ms_rcnn/ms-rcnn_r50_fpn_1x_coco.py', dict()),
    'grid-rcnn': ('grid_rcnn/grid-rcnn_r50_fpn_gn-head_1x_coco.py', dict()),
    'sparse-rcnn': ('sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py', dict()),
    'queryinst': ('queryinst/queryinst_r50_fpn_1x_coco.py', dict()),
    'crowddet-rcnn': ('crowddet/crowddet-rcnn_r50_fpn_8xb2-30e_crowdhuman.py',
                      dict(num_classes=1)),  # (its scores read column 1: one class only)
    'crowddet-refine-rcnn': ('crowddet/crowddet-rcnn_refine_r50_fpn_8xb2-30e_crowdhuman.py',
                             dict(num_classes=1)),
    'sabl-faster-rcnn': ('sabl/sabl-faster-rcnn_r50_fpn_1x_coco.py', dict()),
    'sabl-cascade-rcnn': ('sabl/sabl-cascade-rcnn_r50_fpn_1x_coco.py', dict()),
    'htc': ('htc/htc_r50_fpn_1x_coco.py', dict()),
    'scnet': ('scnet/scnet_r50_fpn_1x_coco.py', dict()),
}
QUERY_RCNN = ['sparse-rcnn', 'queryinst']  # query-based RoI heads (set predictions)
TWO_STAGE = [k for k in ZOO if ('rcnn' in k or k in ('htc', 'scnet')) and k not in QUERY_RCNN]
DENSE = [k for k in ZOO if k not in TWO_STAGE + QUERY_RCNN]
# RoI heads whose box heads read more than one RoI feature tensor per RoI
ROI_READS = {'cascade-rcnn': 3, 'sabl-cascade-rcnn': 3, 'double-head-rcnn': 2, 'htc': 3,
             'scnet': 3}
# DETR-like: transformers shrunk to 2 layers of 32 channels, 12 queries
DETR_ZOO = {
    'detr': 'detr/detr_r50_8xb2-150e_coco.py',
    'conditional-detr': 'conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
    'dab-detr': 'dab_detr/dab-detr_r50_8xb2-50e_coco.py',
    'deformable-detr': 'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
    'dino': 'dino/dino-4scale_r50_8xb2-12e_coco.py',
}
# Grounding DINO: the same shrinking, a tiny random BERT written by the tests (no download),
# the prompt of zoo_batch naming the 3 classes
GROUNDING_ZOO = {'grounding-dino': 'grounding_dino/grounding_dino_r50_scratch_8xb2_1x_coco.py'}
ZOO_PROMPT = 'person . bicycle . car'
TINY_BERT_VOCAB = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '.', '?', ',', 'a', 'the',
                   'person', 'bicycle', 'car', 'dog', 'red', 'left', 'man', 'on')
# (Conditional DETR and DINO keep 256 channels: mmdet's coordinate_to_encoding is
# hard-wired to 128 features per coordinate)
WIDE = ('conditional-detr', 'dino')


def _shrink(node, shrunk: dict):
    """The transformer settings of a DETR config, small (in place)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in shrunk and isinstance(value, int):
                node[key] = shrunk[key]
            else:
                _shrink(value, shrunk)
    elif isinstance(node, list):
        for value in node:
            _shrink(value, shrunk)


def zoo_config(name: str, num_classes: int = 3):
    """The tiny config of a zoo detector: its own test pipeline at 160 x 128 px, test-time
    thresholds that keep the low scores of a random model."""
    if name in DETR_ZOO or name in GROUNDING_ZOO:
        return _detr_config(name, num_classes)
    path, head_options = ZOO[name]
    cfg = get_config(f'mmdet::{path}')
    model = cfg.model
    if model.neck.type == 'CTResNetNeck':  # CenterNet: the last stage, upsampled
        model.backbone = dict(NARROW_RESNET['backbone'], out_indices=(3,))
        model.neck.update(in_channels=64, num_deconv_filters=(32, 32, 32))
    elif model.backbone.type == 'ResNet':
        model.backbone = NARROW_RESNET['backbone']
        model.neck.update(NARROW_RESNET['neck'])
    if 'teacher_backbone' in model:  # LAD: a narrow teacher too, no checkpoint to load
        model.teacher_ckpt = None
        model.teacher_backbone = NARROW_RESNET['backbone']
        model.teacher_neck.update(NARROW_RESNET['neck'])
        model.teacher_bbox_head.update(num_classes=num_classes, in_channels=32,
                                       feat_channels=32)
    else:
        model.backbone.init_cfg = None
    if 'roi_head' in model:
        if model.rpn_head.type == 'EmbeddingRPNHead':  # Sparse R-CNN: 30 learned queries
            model.rpn_head.update(num_proposals=30, proposal_feature_channel=32)
        else:
            model.rpn_head.update(in_channels=32, feat_channels=32)
        heads = model.roi_head.bbox_head
        heads = heads if isinstance(heads, list) else [heads]
        for h in heads:
            h.update(dict(dict(num_classes=num_classes, **_narrow_box_head(h)), **head_options))
        extractors = model.roi_head.bbox_roi_extractor
        for e in (extractors if isinstance(extractors, list) else [extractors]):
            e.out_channels = 32
            if e.roi_layer.get('use_torchvision'):  # CrowdDet (no torchvision for torch 2.13)
                e.roi_layer.use_torchvision = False
        _narrow_roi_branches(model.roi_head, num_classes)
        model.test_cfg.rcnn.update(score_thr=0.0, max_per_img=30)
        if model.test_cfg.rpn is not None:
            model.test_cfg.rpn.update(nms_pre=200, max_per_img=60)
    else:
        head = model.bbox_head
        head.update(num_classes=num_classes, **head_options)
        if model.neck.get('out_channels') == 32:
            head.in_channels = 32
            if 'mask_head' in model:  # CondInst's mask branch reads the neck too
                model.mask_head.mask_feature_head.in_channels = 32
        model.test_cfg.update(score_thr=0.0, nms_pre=100, max_per_img=30)
        if model.bbox_head.type == 'CenterNetHead':  # its top-k is all it keeps
            model.test_cfg.topk = 30
        if model.bbox_head.type == 'YOLOXHead':  # YOLOX ignores max_per_img
            model.test_cfg.score_thr = 0.3
    _tiny_pipeline(cfg)
    return cfg


def _narrow_box_head(box_head) -> dict:
    """The settings that make a RoI box head read 32 channels."""
    if box_head.type == 'SABLHead':
        return dict(cls_in_channels=32, reg_in_channels=32, cls_out_channels=64,
                    reg_offset_out_channels=32, reg_cls_out_channels=32)
    if box_head.type == 'DIIHead':  # Sparse R-CNN
        return dict(in_channels=32, feedforward_channels=64, num_heads=2,
                    dynamic_conv_cfg=dict(box_head.dynamic_conv_cfg, in_channels=32,
                                          feat_channels=16, out_channels=32))
    return dict(in_channels=32, fc_out_channels=64)


def _narrow_roi_branches(roi_head, num_classes: int):
    """32 channels in a RoI head's mask, semantic, global context and relay branches."""
    if 'mask_head' in roi_head:
        extractors = roi_head.mask_roi_extractor
        for e in (extractors if isinstance(extractors, list) else [extractors]):
            e.out_channels = 32
        heads = roi_head.mask_head
        for h in (heads if isinstance(heads, list) else [heads]):
            h.update(num_classes=num_classes, in_channels=32, conv_out_channels=32)
            if h.type == 'DynamicMaskHead':  # QueryInst
                h.dynamic_conv_cfg = dict(h.dynamic_conv_cfg, in_channels=32,
                                          feat_channels=16, out_channels=32)
    if 'grid_head' in roi_head:  # Grid R-CNN: 9 points x 8 channels (GN: 36 groups)
        roi_head.grid_roi_extractor.out_channels = 32
        roi_head.grid_head.update(in_channels=32, point_feat_channels=8)
    if 'mask_iou_head' in roi_head:  # MS R-CNN
        roi_head.mask_iou_head.update(in_channels=32, conv_out_channels=32,
                                      fc_out_channels=64, num_classes=num_classes)
    if 'semantic_head' in roi_head:  # HTC, SCNet
        roi_head.semantic_roi_extractor.out_channels = 32
        roi_head.semantic_head.update(in_channels=32, conv_out_channels=32)
    if 'glbctx_head' in roi_head:  # SCNet
        roi_head.glbctx_head.update(in_channels=32, conv_out_channels=32,
                                    num_classes=num_classes)
        roi_head.feat_relay_head.update(in_channels=64, out_conv_channels=32)


@functools.cache
def tiny_bert() -> str:
    """A folder holding a random 1-layer, 32-feature BERT with a small vocabulary, as
    ``transformers`` saves one (what a user's ``lang_model_name`` points at)."""
    folder = tempfile.mkdtemp(prefix='odamtrain-tiny-bert-')
    vocab = os.path.join(folder, 'vocab.txt')
    with open(vocab, 'w') as f:
        f.write('\n'.join(TINY_BERT_VOCAB) + '\n')
    BertTokenizer(vocab).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(TINY_BERT_VOCAB), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def _detr_config(name: str, num_classes: int):
    cfg = get_config(f'mmdet::{DETR_ZOO.get(name) or GROUNDING_ZOO[name]}')
    model = cfg.model
    if name in GROUNDING_ZOO:  # (its coordinate encodings need 256 channels too)
        model.language_model.name = tiny_bert()
        model.encoder.num_cp = 0
        model.encoder.fusion_layer_cfg.embed_dim = 64
        model.train_cfg = None
    stages = model.backbone.out_indices
    model.backbone = dict(NARROW_RESNET['backbone'], out_indices=stages)
    model.neck.in_channels = [[8, 16, 32, 64][i] for i in stages]
    dims = 256 if name in WIDE or name in GROUNDING_ZOO else 32
    model.neck.out_channels = dims
    if model.neck.get('norm_cfg'):
        model.neck.norm_cfg = dict(type='GN', num_groups=8)
    _shrink(model, dict(embed_dims=dims, num_feats=dims // 2, feedforward_channels=64,
                        num_layers=2, num_heads=2 if dims == 32 else 8))
    model.num_queries = 12
    model.bbox_head.num_classes = num_classes
    model.bbox_head.embed_dims = dims
    model.test_cfg.max_per_img = 12
    _tiny_pipeline(cfg)
    return cfg


def _tiny_pipeline(cfg):
    for t in cfg.test_dataloader.dataset.pipeline:
        if t['type'] in ('Resize', 'FixScaleResize'):
            t.update(scale=(160, 128), keep_ratio=True)
        if t['type'] == 'Pad' and 'size' in t:
            t.update(size=(160, 128))
    cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline


def build_zoo_detector(name: str, num_classes: int = 3, seed: int = 0, train: bool = False):
    register_all_modules()
    cfg = zoo_config(name, num_classes)
    if not train:
        cfg.model.train_cfg = None
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    _spread_outputs(model, seed)
    model.cfg = cfg
    model.to(TEST_DEVICE)  # (not chained: LAD's to() and train() return None)
    model.train(train)
    return model


def _spread_outputs(model, seed):
    """Random weights everywhere in the head (not the zoo's near-constant initialisation),
    so that scores differ across locations and classes."""
    g = torch.Generator().manual_seed(seed + 1)
    if hasattr(model, 'encoder'):  # DETR-like: their own initialisation, except the box
        # branches' last layers that DINO's family zeroes (boxes = the detached references)
        for branch in getattr(model.bbox_head, 'reg_branches', ()):
            last = branch[-1]
            last.weight.data = torch.randn(last.weight.shape, generator=g) * 0.05
        return
    head = model.roi_head if hasattr(model, 'roi_head') else model.bbox_head
    for p in head.parameters():
        if p.dim() > 1:
            p.data = torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5
        else:
            p.data = torch.randn(p.shape, generator=g) * 0.1
    if hasattr(head, 'wh_head'):  # CenterNet: box sizes of a few cells (not < 0: IoU 0)
        head.wh_head[-1].bias.data += 6.0


def zoo_batch(model, seed: int = 0):
    """(inputs, data_samples) of one random 150 x 190 image through the test pipeline."""
    img = np.random.default_rng(seed).integers(0, 255, (150, 190, 3), dtype=np.uint8)
    return prepare_batch(model, img, text=ZOO_PROMPT if hasattr(model, 'language_model')
                         else None)
