# FCOS R50-FPN on CrowdHuman (full boxes), the ODAM paper's setting. 8 GPUs x 2 images:
#   bash tools/dist_train.sh configs/fcos_r50_fpn_crowdhuman.py 8
_base_ = [
    '_base_/models/fcos_r50_fpn.py', '_base_/datasets/crowdhuman.py',
    '_base_/schedules/schedule_30e.py', '_base_/default_runtime.py'
]
