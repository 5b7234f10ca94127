"""Hooks that odamtrain's runner adds to every run."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from .checkpoint import from_plain, to_plain

__all__ = ['PlainCheckpointHook']


@HOOKS.register_module()
class PlainCheckpointHook(Hook):
    """Saves checkpoints without numpy objects or custom classes, so that a plain
    ``torch.load(path, weights_only=True)`` reads them, and restores mmengine's
    ``HistoryBuffer`` log state when such a checkpoint is loaded or resumed.

    Priority ``VERY_LOW``: it converts the checkpoint after every other hook added to it.
    """
    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        plain = to_plain(checkpoint)
        checkpoint.clear()
        checkpoint.update(plain)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        restored = from_plain(checkpoint)
        checkpoint.clear()
        checkpoint.update(restored)
