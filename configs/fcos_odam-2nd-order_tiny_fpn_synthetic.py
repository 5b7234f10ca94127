# The paper's Odam-Train FCOS (fcos_odam-paper) with second-order Odam-Train: the graph of
# dY/dA is kept, so the ODAM losses also train the head's tower convs (the authors' code
# detaches the gradient weights). One of the suspects of why Odam-Train hurts the tiny
# from-scratch FCOS (docs/results.md).
_base_ = './fcos_odam-paper_tiny_fpn_synthetic.py'
model = dict(train_cfg=dict(odam_loss=dict(second_order=True)))
