# The default Odam-Train FCOS with the ODAM paper's setting of the losses: on from the first
# iteration (no warm-up) and the gradient weights dY/dA detached (first order, as in the
# authors' code). On this from-scratch tiny FCOS it costs JI under plain NMS
# (docs/results.md, "Odam-Train settings on the tiny FCOS"). The base of the one-change
# configs (fcos_odam-2nd-order, -lw0.1, -lw0.25, -top3).
_base_ = './fcos_odam_tiny_fpn_synthetic.py'
model = dict(train_cfg=dict(odam_loss=dict(begin_epoch=0, second_order=False)))
