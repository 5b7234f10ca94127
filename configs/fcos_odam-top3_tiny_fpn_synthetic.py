# The paper's Odam-Train FCOS (fcos_odam-paper) comparing only each person's 3 positives of
# highest IoU (FCOS's centre sampling gives up to 9 per person): fewer, better-placed
# positives in L_con and L_sep. One of the suspects of why Odam-Train hurts the tiny
# from-scratch FCOS.
_base_ = './fcos_odam-paper_tiny_fpn_synthetic.py'
model = dict(train_cfg=dict(odam_loss=dict(max_positives_per_object=3)))
