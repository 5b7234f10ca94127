"""The errors of checkpoint loading: every refusal and failure is a :class:`CheckpointError`
whose message names the file."""
from __future__ import annotations

import pickle

__all__ = ['CheckpointError', 'CheckpointSecurityError', 'CheckpointNotFoundError', 'Refused',
           'Unreadable']


class CheckpointError(pickle.UnpicklingError):
    """A checkpoint that cannot be loaded (corrupt, truncated or refused); names the file."""


class CheckpointSecurityError(CheckpointError):
    """A checkpoint refused before or while it is read: outside the allow-list, or beyond
    the bounds on size, nesting and allocation; nothing of it has been executed."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the path (also a ``FileNotFoundError``)."""


class Refused(Exception):
    """Raised by the checks of the file and of the loaded objects; the loader turns it into
    a :class:`CheckpointSecurityError` naming the file."""


class Unreadable(Exception):
    """Raised by the checks of the file when it is damaged rather than refused (empty,
    truncated, not an archive); the loader turns it into a :class:`CheckpointError`."""
