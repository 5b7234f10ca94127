"""Hooks that odamtrain's runner adds to every run."""
from __future__ import annotations

import builtins
import contextlib
import os.path as osp

from mmengine.hooks import CheckpointHook, Hook
from mmengine.hooks import checkpoint_hook as mm_checkpoint_hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from odamtrain.utils import AtomicTextFile

from .checkpoint import drop_config_text, from_plain, to_plain

__all__ = ['PlainCheckpointHook', 'SafeCheckpointHook', 'OdamTrainSwitchHook']


@HOOKS.register_module()
class OdamTrainSwitchHook(Hook):
    """Odam-Train from epoch ``model.train_cfg.odam_loss.begin_epoch`` on (0-based, default
    0: from the start; 4: epochs 1-4 train with the detector's own losses only, then
    ``loss_odam_con`` / ``loss_odam_sep`` join): sets each Odam-Train head's
    ``odam_loss_active`` before every training epoch, so a resumed run gets the switch of its
    epoch. :class:`OdamRunner` adds it to every run; without Odam-Train it does nothing."""

    def before_train_epoch(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for head in model.modules():
            if getattr(head, 'odam_mixin', False) and head.odam_loss is not None:
                head.odam_loss_active = runner.epoch >= head.odam_loss.begin_epoch


@HOOKS.register_module()
class PlainCheckpointHook(Hook):
    """Saves checkpoints without numpy objects or custom classes, so that a plain
    ``torch.load(path, weights_only=True)`` reads them, and restores mmengine's
    ``HistoryBuffer`` log state when such a checkpoint is loaded or resumed. Whatever
    loaded it (a URL too), the config text in it is dropped before mmengine's ``resume``
    would execute it.

    Priority ``VERY_LOW``: it converts the checkpoint after every other hook added to it.
    """
    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        plain = to_plain(checkpoint)
        checkpoint.clear()
        checkpoint.update(plain)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        restored = from_plain(checkpoint)
        drop_config_text(restored)
        checkpoint.clear()
        checkpoint.update(restored)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) that never leaves a run without a
    loadable checkpoint: the checkpoints that ``max_keep_ckpts`` (or a better ``save_best``)
    retires are deleted only after the new one is completely written, and the work dir's
    ``last_checkpoint`` pointer is written atomically. (mmengine deletes first, so a kill
    in between leaves nothing with ``max_keep_ckpts=1``.) :class:`OdamRunner` uses it in
    place of a configured ``CheckpointHook``."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        with _removals_after_success(self.file_backend, self._current), \
                _atomic_writes_of(pointer):
            super()._save_checkpoint_with_step(runner, step, meta)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        with _removals_after_success(self.file_backend, self._current):
            super()._save_best_checkpoint(runner, metrics)

    def _current(self) -> set:
        """The checkpoints this hook has just written (never retired)."""
        best = getattr(self, 'best_ckpt_path_dict', None) or {}
        return {self.last_ckpt, getattr(self, 'best_ckpt_path', None), *best.values()}


@contextlib.contextmanager
def _removals_after_success(backend, current):
    """Inside, ``backend.remove(path)`` only records ``path``; the recorded files are
    removed when the block completes without an error (never otherwise), except those in
    ``current()`` (the checkpoints just written)."""
    pending = []
    backend.remove = pending.append  # the instance attribute shadows the method
    try:
        yield
    finally:
        del backend.remove
    keep = current()
    for path in pending:
        if path not in keep and backend.isfile(path):
            backend.remove(path)


@contextlib.contextmanager
def _atomic_writes_of(path: str):
    """Inside, mmengine's checkpoint hook module opening ``path`` for writing gets an
    :class:`odamtrain.utils.AtomicTextFile` (its ``last_checkpoint`` write truncates in
    place); every other ``open`` is the built-in one."""
    target = osp.abspath(path)

    def open_(file, mode='r', *args, **kwargs):
        if mode == 'w' and osp.abspath(file) == target:
            return AtomicTextFile(file)
        return builtins.open(file, mode, *args, **kwargs)

    mm_checkpoint_hook.open = open_
    try:
        yield
    finally:
        del mm_checkpoint_hook.open
