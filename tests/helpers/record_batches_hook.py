"""Test helper: records what each rank trained on and its final weights."""
import json
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RecordBatchesHook(Hook):
    def before_train(self, runner):
        self.seen = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.seen += [s.img_id for s in data_batch['data_samples']]

    def after_train(self, runner):
        rank = get_rank()
        with open(osp.join(runner.work_dir, f'seen_rank{rank}.json'), 'w') as f:
            json.dump(self.seen, f)
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        torch.save(model.state_dict(), osp.join(runner.work_dir, f'weights_rank{rank}.pth'))
