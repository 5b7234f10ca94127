# Faster R-CNN R50-FPN with Odam-Train on CrowdHuman (full boxes), tested with Odam-NMS.
#   bash tools/dist_train.sh configs/faster-rcnn_odam_crowdhuman.py 8
# Plain NMS at test time: --cfg-options model.test_cfg.rcnn.nms.type=nms
_base_ = './faster-rcnn_r50_fpn_crowdhuman.py'
model = dict(
    train_cfg=dict(odam_loss=dict(loss_weight=0.2, second_order=False, max_positives=300)),
    test_cfg=dict(rcnn=dict(nms=dict(type='odam_nms', iou_threshold=0.5, corr_low=0.2,
                                     corr_high=0.8))))
