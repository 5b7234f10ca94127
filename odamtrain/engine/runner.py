"""mmengine's Runner with CPU distributed training and crash-safe resuming."""
from __future__ import annotations

import glob
import os.path as osp
import re

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed
from mmengine.registry import MODEL_WRAPPERS, RUNNERS
from mmengine.runner import Runner

from .hooks import PlainCheckpointHook

__all__ = ['OdamRunner', 'latest_complete_checkpoint']


def latest_complete_checkpoint(work_dir: str) -> str | None:
    """The checkpoint to resume from: the one ``work_dir/last_checkpoint`` names if it exists,
    else the newest ``epoch_N.pth`` / ``iter_N.pth`` (every ``.pth`` is complete because
    odamtrain writes checkpoints to a temporary file and renames it)."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        if named and osp.isfile(named):
            return named
    found = []
    for path in glob.glob(osp.join(work_dir, '*.pth')):
        m = re.fullmatch(r'(epoch|iter)_(\d+)\.pth', osp.basename(path))
        if m:
            found.append((int(m.group(2)), osp.getmtime(path), path))
    return max(found)[2] if found else None


@RUNNERS.register_module()
class OdamRunner(Runner):
    """``mmengine.runner.Runner`` plus:

    * ``launcher='pytorch'`` on a machine without CUDA: the process group is initialised
      with gloo (mmengine's ``init_dist`` calls ``torch.cuda.set_device``) and the model is
      wrapped in DDP with ``device_ids=None`` (mmengine passes the local rank as a GPU id);
    * :class:`PlainCheckpointHook` is always registered (weights_only-loadable checkpoints);
    * ``resume=True`` without ``load_from`` resumes from the last *complete* checkpoint
      (:func:`latest_complete_checkpoint`), and starts fresh if there is none.
    """

    def setup_env(self, env_cfg: dict) -> None:
        if self.distributed and not is_distributed() and not torch.cuda.is_available():
            torch_dist.init_process_group(backend='gloo')
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        if not (self.distributed and not torch.cuda.is_available()):
            return super().wrap_model(model_wrapper_cfg, model)
        cfg = dict(model_wrapper_cfg or dict(
            type='MMDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=self.cfg.get('find_unused_parameters', False)))
        cfg.setdefault('type', 'MMDistributedDataParallel')
        return MODEL_WRAPPERS.build(cfg, default_args=dict(module=model, device_ids=None))

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        super().register_hooks(default_hooks, custom_hooks)
        if not any(isinstance(h, PlainCheckpointHook) for h in self._hooks):
            self.register_hook(PlainCheckpointHook())

    def load_or_resume(self) -> None:
        if self._resume and self._load_from is None and not self._has_loaded:
            self._load_from = latest_complete_checkpoint(self.work_dir)
            if self._load_from is None:
                self.logger.info(f'no complete checkpoint in {self.work_dir}: starting fresh')
                self._resume = False
        super().load_or_resume()


