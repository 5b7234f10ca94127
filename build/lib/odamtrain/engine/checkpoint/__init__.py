"""Checkpoints from anyone: loading that is bounded, weights-only and never executes
anything (:mod:`.archive` checks the file, :mod:`.rebuild` the loaded objects,
:mod:`.loader` ties them to mmengine), and plain checkpoints that a bare
``torch.load(path, weights_only=True)`` reads."""
from .errors import CheckpointError, CheckpointNotFoundError, CheckpointSecurityError
from .loader import (
    CONFIG_TEXT_KEYS,
    allowed_globals,
    check_resumable,
    drop_config_text,
    from_plain,
    register_safe_local_loader,
    safe_load_checkpoint,
    to_plain,
)

__all__ = ['CheckpointError', 'CheckpointSecurityError', 'CheckpointNotFoundError',
           'safe_load_checkpoint', 'allowed_globals', 'check_resumable', 'drop_config_text',
           'to_plain', 'from_plain', 'register_safe_local_loader', 'CONFIG_TEXT_KEYS']
