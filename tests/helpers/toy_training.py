"""Test helper: a toy model trained by :class:`odamtrain.engine.OdamRunner`, one checkpoint
per iteration (about 20 MB each, so that most of the run is spent saving).

    python tests/helpers/toy_training.py WORK_DIR MAX_KEEP_CKPTS MAX_ITERS
Prints ``TRAINING <iter>`` when training starts and ``DONE <iter>`` at the end.
"""
import sys

import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel

from odamtrain.engine import OdamRunner


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 1)
        self.register_buffer('ballast', torch.zeros(5 * 2 ** 20))

    def forward(self, x, mode='loss'):
        return dict(loss=(self.fc(x) ** 2).mean())


class Announce(Hook):
    def before_train(self, runner):
        print(f'TRAINING {runner.iter}', flush=True)

    def after_train(self, runner):
        print(f'DONE {runner.iter}', flush=True)


def main(work_dir: str, max_keep: int, max_iters: int) -> None:
    data = [dict(x=torch.randn(4)) for _ in range(8)]
    runner = OdamRunner(
        model=ToyModel(), work_dir=work_dir,
        train_dataloader=dict(dataset=data, sampler=dict(type='InfiniteSampler'),
                              batch_size=2, collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1,
                                           max_keep_ckpts=max_keep),
                           logger=dict(type='LoggerHook', interval=1000)),
        custom_hooks=[Announce()], resume=True, default_scope='mmengine')
    runner.train()


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
