"""mmengine's Runner with CPU distributed training and crash-safe checkpoints and resuming."""
from __future__ import annotations

import os
import os.path as osp
import re

import torch
import torch.distributed as torch_dist
from mmengine.dist import get_rank, is_distributed
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import MODEL_WRAPPERS, RUNNERS
from mmengine.runner import Runner

from odamtrain.models import install_odam
from odamtrain.utils import remove_stale_temp_files

from .checkpoint import CheckpointError, check_resumable, safe_load_checkpoint
from .hooks import OdamTrainSwitchHook, PlainCheckpointHook, SafeCheckpointHook

__all__ = ['OdamRunner', 'resumable_checkpoint']


def resumable_checkpoint(work_dir: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The checkpoint ``--resume`` continues from: the first of these that loads and holds
    what a resume reads (:func:`safe_load_checkpoint` + :func:`check_resumable`): the one
    ``work_dir/last_checkpoint`` names, then ``epoch_N.pth`` / ``iter_N.pth`` newest
    (largest N) first.

    Args:
        work_dir: the run's work directory.

    Returns:
        tuple: ``(path or None, [(path, why it was skipped), ...])``.
    """
    candidates, skipped = [], []
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        named, why = _read_pointer(pointer)
        if why:
            skipped.append((pointer, why))
        elif named:
            candidates.append(named)
    numbered = []
    for name in os.listdir(work_dir) if osp.isdir(work_dir) else []:
        m = re.fullmatch(r'(epoch|iter)_(\d+)\.pth', name)
        path = osp.join(work_dir, name)
        if m and osp.isfile(path):
            numbered.append((int(m.group(2)), osp.getmtime(path), path))
    candidates += [p for *_, p in sorted(numbered, reverse=True) if p not in candidates]
    for path in candidates:
        if not osp.isfile(path):
            skipped.append((path, 'last_checkpoint names it, but it does not exist'))
            continue
        try:
            check_resumable(safe_load_checkpoint(path, map_location='cpu'), path)
        except CheckpointError as e:
            skipped.append((path, str(e)))
            continue
        return path, skipped
    return None, skipped


def _read_pointer(pointer: str, limit: int = 4096) -> tuple[str, str | None]:
    """(the path ``last_checkpoint`` names, None) or ('', why it names none)."""
    with open(pointer, 'rb') as f:
        raw = f.read(limit + 1)
    try:
        text = raw.decode('utf-8').strip()
    except UnicodeDecodeError:
        return '', f'{pointer} is not UTF-8 text; expected the path of a checkpoint'
    if len(raw) > limit or '\x00' in text or '\n' in text:
        return '', f'{pointer} is not one path of at most {limit} bytes'
    return text, None


@RUNNERS.register_module()
class OdamRunner(Runner):
    """``mmengine.runner.Runner`` plus:

    * Odam-NMS and Odam-Train switched on in the model where its config asks
      (:func:`odamtrain.models.install_odam`);
    * ``launcher='pytorch'`` on a machine without CUDA: the process group is initialised
      with gloo (mmengine's ``init_dist`` calls ``torch.cuda.set_device``) and the model is
      wrapped in DDP with ``device_ids=None`` (mmengine passes the local rank as a GPU id);
    * :class:`PlainCheckpointHook` is always registered (weights_only-loadable checkpoints),
      and a configured ``CheckpointHook`` is a :class:`SafeCheckpointHook` (old checkpoints
      are deleted only after the new one is complete);
    * the temporary files of atomic writes that a killed run left in the work dir are
      removed at start (rank 0);
    * ``resume=True`` without ``load_from`` resumes from the newest checkpoint that loads
      and resumes (:func:`resumable_checkpoint`; each skipped one is logged with the
      reason), starts fresh if the work dir has none, and refuses to start when
      ``last_checkpoint`` shows an earlier run but none of its checkpoints loads; with
      ``load_from`` (``--resume CKPT``) that file is checked the same way first. Nothing in
      a checkpoint is executed: mmengine's config text in it is dropped on load
      (:func:`odamtrain.engine.checkpoint.drop_config_text`), the run's config is the one
      passed.
    """

    def setup_env(self, env_cfg: dict) -> None:
        if self.distributed and not is_distributed() and not torch.cuda.is_available():
            torch_dist.init_process_group(backend='gloo')
        super().setup_env(env_cfg)
        if get_rank() == 0:  # only rank 0 writes; this runs before its first write
            for path in remove_stale_temp_files(self._work_dir):
                print_log(f'removed {path}, left by a killed write', logger='current')

    def build_model(self, model):
        """mmengine's, then Odam-NMS / Odam-Train where the config asks
        (:func:`odamtrain.models.install_odam`)."""
        return install_odam(super().build_model(model))

    def wrap_model(self, model_wrapper_cfg, model):
        if not (self.distributed and not torch.cuda.is_available()):
            return super().wrap_model(model_wrapper_cfg, model)
        cfg = dict(model_wrapper_cfg or dict(
            type='MMDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=self.cfg.get('find_unused_parameters', False)))
        cfg.setdefault('type', 'MMDistributedDataParallel')
        return MODEL_WRAPPERS.build(cfg, default_args=dict(module=model, device_ids=None))

    def register_default_hooks(self, hooks=None) -> None:
        hooks = dict(hooks or {})
        checkpoint = hooks.get('checkpoint', dict(type='CheckpointHook', interval=1))
        if isinstance(checkpoint, dict) and checkpoint.get('type') in ('CheckpointHook',
                                                                        CheckpointHook):
            hooks['checkpoint'] = dict(checkpoint, type=SafeCheckpointHook)
        super().register_default_hooks(hooks)

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        super().register_hooks(default_hooks, custom_hooks)
        if not any(isinstance(h, PlainCheckpointHook) for h in self._hooks):
            self.register_hook(PlainCheckpointHook())
        if not any(isinstance(h, OdamTrainSwitchHook) for h in self._hooks):
            self.register_hook(OdamTrainSwitchHook())

    def load_or_resume(self) -> None:
        if self._resume and self._load_from is not None and osp.isfile(self._load_from):
            check_resumable(safe_load_checkpoint(self._load_from, map_location='cpu'),
                            self._load_from)
        if self._resume and self._load_from is None and not self._has_loaded:
            self._load_from, skipped = resumable_checkpoint(self.work_dir)
            for path, reason in skipped:
                self.logger.warning(f'resume: skipped {path}: {reason}')
            if self._load_from is None:
                if osp.isfile(osp.join(self.work_dir, 'last_checkpoint')):
                    raise CheckpointError(
                        f'--resume: {self.work_dir}/last_checkpoint shows an earlier run, but '
                        f'none of its checkpoints loads ({len(skipped)} tried, see the '
                        'warnings above); delete last_checkpoint to start from scratch')
                self.logger.info(f'no checkpoint in {self.work_dir}: starting fresh')
                self._resume = False
            else:
                self.logger.info(f'resuming from {self._load_from}')
        super().load_or_resume()
