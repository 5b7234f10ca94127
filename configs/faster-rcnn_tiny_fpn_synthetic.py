# Tiny Faster R-CNN for the embedded data: narrow ResNet-18 from scratch (GroupNorm),
# 4 FPN levels, 7x7 RoIAlign, anchors H:W = 1, 2, 3.
_base_ = [
    '_base_/models/faster-rcnn_r50_fpn.py', '_base_/datasets/synthetic_crowdhuman.py',
    '_base_/schedules/schedule_synthetic.py', '_base_/default_runtime.py'
]
model = dict(
    backbone=dict(depth=18, base_channels=16, frozen_stages=-1,
                  norm_cfg=dict(type='GN', num_groups=8, requires_grad=True), norm_eval=False,
                  init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64, num_outs=4),
    rpn_head=dict(in_channels=64, feat_channels=64,
                  anchor_generator=dict(scales=[6], strides=[4, 8, 16, 32])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64, featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(in_channels=64, fc_out_channels=256)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=500),
                   rcnn=dict(sampler=dict(num=256))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300), rcnn=dict(max_per_img=100)))
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=4))
