# CrowdDet R50-FPN on CrowdHuman (full boxes), the crowd peer of the ODAM paper's detectors:
# mmdet 3.3's crowddet-rcnn_r50_fpn_8xb2-30e_crowdhuman (AP 90.3, MR^-2 41.3, JI 82.6 in its
# README) with mmcv's RoIAlign, odamtrain's strict dataset and metric, the same 30-epoch
# schedule; mmdet's LR (0.002 for 8 GPUs x 2 images) and no gradient clipping.
_base_ = [
    '_base_/models/crowddet-rcnn_r50_fpn.py', '_base_/datasets/crowdhuman.py',
    '_base_/schedules/schedule_30e.py', '_base_/default_runtime.py'
]
optim_wrapper = dict(optimizer=dict(lr=0.002), clip_grad=None)
