from .audit_hook import ExplanationAuditHook
from .checkpoint import CheckpointSecurityError, from_plain, safe_load_checkpoint, to_plain
from .hooks import PlainCheckpointHook
from .runner import OdamRunner, latest_complete_checkpoint

__all__ = ['CheckpointSecurityError', 'safe_load_checkpoint', 'to_plain', 'from_plain',
           'PlainCheckpointHook', 'ExplanationAuditHook', 'OdamRunner',
           'latest_complete_checkpoint']
