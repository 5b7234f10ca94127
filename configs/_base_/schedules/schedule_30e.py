# The ODAM paper's CrowdHuman schedule: SGD (momentum 0.9, wd 1e-4), 30 epochs, LR / 10 at
# epochs 24 and 27, linear warm-up. lr 0.01 is for a total batch of 16 (8 GPUs x 2).
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=30, val_interval=5)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=800),
    dict(type='MultiStepLR', begin=0, end=30, by_epoch=True, milestones=[24, 27], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001),
    clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=16)
