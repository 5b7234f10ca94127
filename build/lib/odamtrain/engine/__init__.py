from .audit_hook import ExplanationAuditHook
from .checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointSecurityError,
    check_resumable,
    from_plain,
    safe_load_checkpoint,
    to_plain,
)
from .hooks import OdamTrainSwitchHook, PlainCheckpointHook, SafeCheckpointHook
from .runner import OdamRunner, resumable_checkpoint

__all__ = ['CheckpointError', 'CheckpointSecurityError', 'CheckpointNotFoundError',
           'check_resumable', 'safe_load_checkpoint', 'to_plain',
           'from_plain', 'PlainCheckpointHook', 'SafeCheckpointHook', 'ExplanationAuditHook',
           'OdamTrainSwitchHook', 'OdamRunner', 'resumable_checkpoint']
