# Faster R-CNN R50-FPN on CrowdHuman (full boxes), the ODAM paper's setting.
_base_ = [
    '_base_/models/faster-rcnn_r50_fpn.py', '_base_/datasets/crowdhuman.py',
    '_base_/schedules/schedule_30e.py', '_base_/default_runtime.py'
]
optim_wrapper = dict(optimizer=dict(lr=0.02))
