# The embedded default: tiny FCOS with Odam-Train on the synthetic crowds, tested with
# Odam-NMS (bash tools/demo.sh trains and tests it). Odam-Train with the ODAM paper's FCOS
# weight (0.5, <= 300 positives per image), switched on after a warm-up of the first third
# of the schedule (epochs 1-4: FCOS's own losses only) and second order (the losses also
# train the head's towers through dY/dA; the authors' code detaches it). On this
# from-scratch tiny FCOS this pair keeps plain NMS's JI at the plain model's, gives the
# best JI with Odam-NMS and more discriminative maps (docs/results.md, "Odam-Train settings
# on the tiny FCOS"). The paper's setting (on from the first iteration, detached):
# configs/fcos_odam-paper_tiny_fpn_synthetic.py; the warm-up alone, detached:
# configs/fcos_odam-1st-order_tiny_fpn_synthetic.py.
_base_ = './fcos_tiny_fpn_synthetic.py'
model = dict(
    train_cfg=dict(odam_loss=dict(loss_weight=0.5, second_order=True, max_positives=300,
                                  begin_epoch=4)),
    test_cfg=dict(nms=dict(type='odam_nms', iou_threshold=0.5, corr_low=0.2,
                           corr_high=0.8)))
# The explanation audit after testing (tools/test.py): ODAM vs Grad-CAM, D-RISE and VPS on
# correctly detected val objects and on the people it misses at score 0.3, with budgets
# that fit in minutes on a CPU (papers: 5000 masks, all 64 regions, 100 steps, IoU 0.9 -
# the tiny model's boxes rarely reach 0.9).
custom_hooks = [
    dict(type='ExplanationAuditHook', methods=('odam', 'gradcam', 'drise', 'vps'),
         after_train=False, after_test=True, max_images=4, iou_thr=0.5,
         sets=('detected', 'missed'), score_thr=0.3, deletion_steps=10,
         drise=dict(num_masks=100), vps=dict(regions=16, max_steps=3))
]
