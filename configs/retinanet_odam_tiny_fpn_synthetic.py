# The tiny RetinaNet with Odam-Train on the synthetic crowds, tested with Odam-NMS: the same
# two settings as the FCOS demo config, for another head family.
_base_ = './retinanet_tiny_fpn_synthetic.py'
model = dict(
    train_cfg=dict(odam_loss=dict(loss_weight=0.5, second_order=False, max_positives=300)),
    test_cfg=dict(nms=dict(type='odam_nms', iou_threshold=0.5, corr_low=0.2,
                           corr_high=0.8)))
