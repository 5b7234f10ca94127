# Short schedule for the synthetic demo: SGD, warm-up, LR / 10 at 3/4 of training.
_base_ = './schedule_30e.py'

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[int(max_epochs * 0.75)], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.02))
