# The paper's Odam-Train FCOS (fcos_odam-paper) with the ODAM losses weighted 0.25 (the
# paper's FCOS: 0.5). One of the suspects of why Odam-Train hurts the tiny from-scratch FCOS.
_base_ = './fcos_odam-paper_tiny_fpn_synthetic.py'
model = dict(train_cfg=dict(odam_loss=dict(loss_weight=0.25)))
