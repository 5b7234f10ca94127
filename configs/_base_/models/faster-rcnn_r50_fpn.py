# Faster R-CNN R50-FPN (mmdet's), one class, anchors with H:W = 1, 2, 3 for people.
# ImageNet weights from a local file, as in fcos_r50_fpn.py.
_base_ = 'mmdet::_base_/models/faster-rcnn_r50_fpn.py'
model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50.pth')),
    rpn_head=dict(anchor_generator=dict(ratios=[1.0, 2.0, 3.0])),  # mmdet ratio = h / w
    roi_head=dict(bbox_head=dict(num_classes=1)),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000),
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                  max_per_img=300)))
