# FCOS R50-FPN with Odam-Train on CrowdHuman (full boxes), tested with Odam-NMS: the ODAM
# paper's setting. Data in data/CrowdHuman/ (docs/crowdhuman.md), ImageNet ResNet-50 weights in
# checkpoints/resnet50.pth. 8 GPUs x 2 images:
#   bash tools/dist_train.sh configs/fcos_odam_crowdhuman.py 8
# Plain NMS at test time: --cfg-options model.test_cfg.nms.type=nms
_base_ = './fcos_r50_fpn_crowdhuman.py'
model = dict(
    train_cfg=dict(odam_loss=dict(loss_weight=0.5, second_order=False, max_positives=300)),
    test_cfg=dict(nms=dict(type='odam_nms', iou_threshold=0.5, corr_low=0.2,
                           corr_high=0.8)))
# The explanation audit after training and testing (papers' settings, 500 val images):
# well-detected people (IoU > 0.9) and the people missed at score 0.3. VPS (64 SLICO
# regions: ~850 forwards per object windowed, 4162 greedy) is left to tools/audit.py on a
# subset.
custom_hooks = [
    dict(type='ExplanationAuditHook', methods=('odam', 'gradcam', 'gradcampp', 'drise'),
         max_images=500, iou_thr=0.9, sets=('detected', 'missed'), score_thr=0.3,
         deletion_steps=100, drise=dict(num_masks=5000))
]
