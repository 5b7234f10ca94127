# The demo's Odam-Train FCOS with the ODAM losses switched on after a warm-up of the first
# third of the schedule (epochs 1-4: FCOS's own losses only), one of the suspects of why
# Odam-Train hurts the tiny from-scratch FCOS (docs/results.md).
_base_ = './fcos_odam_tiny_fpn_synthetic.py'
model = dict(train_cfg=dict(odam_loss=dict(begin_epoch=4)))
