# The embedded default: tiny FCOS with Odam-Train on the synthetic crowds, tested with
# Odam-NMS (bash tools/demo.sh trains and tests it).
_base_ = './fcos_tiny_fpn_synthetic.py'
model = dict(
    bbox_head=dict(type='OdamFCOSHead', odam_loss=dict(loss_weight=0.5, second_order=False,
                                                       max_positives=300)),
    test_cfg=dict(nms=dict(type='odam_nms', iou_threshold=0.5, corr_low=0.2,
                           corr_high=0.8)))
