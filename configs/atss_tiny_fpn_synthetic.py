# Tiny ATSS for the embedded data: the narrow ResNet-18 of the tiny FCOS from scratch
# (GroupNorm), 3 FPN levels (strides 8, 16, 32), 64-channel GN head, 32-pixel anchors at
# stride 8 (the synthetic people are 30-120 pixels tall).
_base_ = [
    '_base_/models/atss_r50_fpn.py', '_base_/datasets/synthetic_crowdhuman.py',
    '_base_/schedules/schedule_synthetic.py', '_base_/default_runtime.py'
]
model = dict(
    backbone=dict(depth=18, base_channels=16, out_indices=(1, 2, 3), frozen_stages=-1,
                  norm_cfg=dict(type='GN', num_groups=8, requires_grad=True), norm_eval=False,
                  init_cfg=None),
    neck=dict(in_channels=[32, 64, 128], out_channels=64, start_level=0,
              add_extra_convs=False, num_outs=3),
    bbox_head=dict(in_channels=64, feat_channels=64,
                   anchor_generator=dict(strides=[8, 16, 32], octave_base_scale=4),
                   norm_cfg=dict(type='GN', num_groups=16, requires_grad=True)),
    test_cfg=dict(max_per_img=100))
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=4))
