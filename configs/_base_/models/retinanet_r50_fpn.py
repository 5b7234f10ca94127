# RetinaNet R50-FPN (mmdet's), one class (person), anchors with H:W = 1, 2, 3 as the
# Faster R-CNN config. ImageNet weights from a local file, as in fcos_r50_fpn.py.
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'
model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50.pth')),
    bbox_head=dict(num_classes=1, anchor_generator=dict(ratios=[1.0, 2.0, 3.0])),
    test_cfg=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=300))
