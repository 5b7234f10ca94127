# The default Odam-Train FCOS (warm-up of 4 epochs) with the gradient weights dY/dA detached
# (first order, as in the authors' code): keeps detection, not the maps' gain
# (docs/results.md, "Odam-Train settings on the tiny FCOS"); 1.43x instead of 1.76x the
# plain step time on this tiny FCOS.
_base_ = './fcos_odam_tiny_fpn_synthetic.py'
model = dict(train_cfg=dict(odam_loss=dict(second_order=False)))
