# Tiny CrowdDet, the crowd peer of the tiny Faster R-CNN: the same narrow ResNet-18 from
# scratch (GroupNorm), FPN, anchors, RoI sizes, schedule and data; mmdet's CrowdDet head
# (two instances per proposal, EMD loss, Set-NMS at IoU 0.5).
_base_ = [
    '_base_/models/crowddet-rcnn_r50_fpn.py', '_base_/datasets/synthetic_crowdhuman.py',
    '_base_/schedules/schedule_synthetic.py', '_base_/default_runtime.py'
]
model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(depth=18, base_channels=16, frozen_stages=-1,
                  norm_cfg=dict(type='GN', num_groups=8, requires_grad=True), norm_eval=False,
                  init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64, num_outs=4,
              upsample_cfg=dict(_delete_=True, mode='nearest')),
    rpn_head=dict(in_channels=64, feat_channels=64,
                  anchor_generator=dict(scales=[6], strides=[4, 8, 16, 32], centers=None)),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64, featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(in_channels=64, fc_out_channels=256)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=500, min_bbox_size=0),
                   rcnn=dict(sampler=dict(num=256))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300, min_bbox_size=0),
                  rcnn=dict(score_thr=0.05, max_per_img=100)))
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=4))
