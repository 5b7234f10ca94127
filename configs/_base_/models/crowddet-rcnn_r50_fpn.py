# CrowdDet R50-FPN (Chu et al., CVPR'20) as mmdet 3.3 ships it
# (mmdet::crowddet/crowddet-rcnn_r50_fpn_8xb2-30e_crowdhuman.py, whose model part this is):
# two instances per proposal (MultiInstanceBBoxHead), EMD loss, Set-NMS at test time.
# One change: mmcv's RoIAlign (use_torchvision=False) instead of torchvision's, which needs
# a torchvision build matching torch (none imports against the CPU torch 2.13 here).
# ImageNet weights from a local file, as in fcos_r50_fpn.py.
model = dict(
    type='CrowdDet',
    data_preprocessor=dict(
        type='DetDataPreprocessor', mean=[103.53, 116.28, 123.675],
        std=[57.375, 57.12, 58.395], bgr_to_rgb=False, pad_size_divisor=64),
    backbone=dict(
        type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50.pth')),
    neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5,
              upsample_cfg=dict(mode='bilinear', align_corners=False)),
    rpn_head=dict(
        type='RPNHead', in_channels=256, feat_channels=256,
        anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[1.0, 2.0, 3.0],
                              strides=[4, 8, 16, 32, 64],
                              centers=[(8, 8), (8, 8), (8, 8), (8, 8), (8, 8)]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0],
                        target_stds=[1.0, 1.0, 1.0, 1.0], clip_border=False),
        loss_cls=dict(type='CrossEntropyLoss', loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    roi_head=dict(
        type='MultiInstanceRoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=-1, aligned=True,
                           use_torchvision=False),
            out_channels=256, featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(
            type='MultiInstanceBBoxHead', with_refine=False, num_shared_fcs=2,
            in_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=1,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                            target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(type='CrossEntropyLoss', loss_weight=1.0, use_sigmoid=False,
                          reduction='none'),
            loss_bbox=dict(type='SmoothL1Loss', loss_weight=1.0, reduction='none'))),
    train_cfg=dict(
        rpn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=(0.3, 0.7),
                          min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1,
                         add_gt_as_proposals=False),
            allowed_border=-1, pos_weight=-1, debug=False),
        rpn_proposal=dict(nms_pre=2400, max_per_img=2000,
                          nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=2),
        rcnn=dict(
            assigner=dict(type='MultiInstanceAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5,
                          min_pos_iou=0.3, match_low_quality=False, ignore_iof_thr=-1),
            sampler=dict(type='MultiInsRandomSampler', num=512, pos_fraction=0.5,
                         neg_pos_ub=-1, add_gt_as_proposals=False),
            pos_weight=-1, debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=1200, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                 min_bbox_size=2),
        rcnn=dict(nms=dict(type='nms', iou_threshold=0.5), score_thr=0.01, max_per_img=500)))
