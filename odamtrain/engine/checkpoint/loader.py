"""Loading checkpoints from anyone: bounded, weights-only, never executed.

:func:`safe_load_checkpoint` is mmengine's loader for local paths once odamtrain is
imported (:func:`register_safe_local_loader`), so ``load_from``, ``--resume``,
``tools/test.py`` and mmdet's ``init_detector`` all go through it:

1. the file is checked before torch reads it (:func:`.archive.check_archive`: zip format,
   inflated size, the pickle's operations, globals and allocations);
2. torch's weights-only unpickler reads it, numpy / mmengine names resolving to inert
   recipes (:func:`.rebuild.only_stand_ins`);
3. the result is made plain and checked (:class:`.rebuild.Rebuilder`);
4. the config text mmengine stores in a checkpoint (``meta['config']``, ``meta['cfg']``,
   ``message_hub['runtime_info']['cfg']``) is dropped: mmengine's ``Runner.resume`` and
   ``BaseInferencer`` would execute it as a ``.py`` file. A resumed run uses the config
   the user passed.

Every refusal and failure is a :class:`CheckpointError` naming the file.
:func:`check_resumable` checks what ``Runner.resume`` will read, so that a run resumes
from the newest checkpoint that really resumes.
"""
from __future__ import annotations

import functools
import os.path as osp
import pickle
import re

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from .archive import check_archive
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointSecurityError,
    Refused,
    Unreadable,
)
from .rebuild import HISTORY_BUFFER_KEY, Rebuilder, only_stand_ins, stand_in_names

__all__ = ['safe_load_checkpoint', 'allowed_globals', 'drop_config_text', 'check_resumable',
           'to_plain', 'from_plain', 'register_safe_local_loader', 'CONFIG_TEXT_KEYS']

# where mmengine keeps its config as Python source in a checkpoint
CONFIG_TEXT_KEYS = (('meta', 'config'), ('meta', 'cfg'), ('message_hub', 'runtime_info', 'cfg'))
_STORAGE = re.compile(r'torch\.(cuda\.)?(BFloat16|Bool|Byte|Char|ComplexDouble|ComplexFloat|'
                      r'Double|Float|Half|Int|Long|Short)Storage')


@functools.lru_cache(maxsize=1)
def allowed_globals() -> frozenset[str]:
    """The globals a checkpoint's pickle may name: containers (``Counter``: mmengine's
    ``MultiStepParamScheduler`` milestones), numbers, tensors rebuilt over their storage,
    storage types and dtypes, and the numpy / mmengine stand-ins. Not torch's
    whole weights-only list: ``bytearray``, tensor classes, typed / untyped storages called
    with a size, quantized, sparse, nested and subclass rebuilds allocate from a number in
    the file, or set attributes the file chooses."""
    names = {'collections.OrderedDict', 'collections.Counter', 'builtins.set',
             'builtins.complex', '_codecs.encode', 'torch.Size', 'torch.device',
             'torch._utils._rebuild_tensor', 'torch._utils._rebuild_tensor_v2',
             'torch._utils._rebuild_tensor_v3', 'torch._utils._rebuild_parameter',
             'torch.nn.parameter.Parameter'}
    names |= {f'{c.__module__}.{c.__name__}' for c in torch._storage_classes
              if _STORAGE.fullmatch(f'{c.__module__}.{c.__name__}')}
    names |= {f'torch.{n}' for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)}
    return frozenset(names | stand_in_names())


def safe_load_checkpoint(filename: str, map_location=None):
    """Load a checkpoint weights-only, bounded and checked (module docstring).

    Args:
        filename: a local file.
        map_location: as ``torch.load``'s.

    Returns:
        The checkpoint with plain tensors, numeric numpy objects and ``HistoryBuffer`` s, and
        without config text.

    Raises:
        CheckpointNotFoundError: no such file.
        CheckpointSecurityError: refused (the message names the file and what was refused);
            nothing of it has been executed.
        CheckpointError: any other failure (truncated, corrupt, empty), with the file and
            the cause.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise CheckpointNotFoundError(f'checkpoint {filename} can not be found')
    refusal = ('refused to load checkpoint {}: {}. Only load checkpoints from sources you '
               'trust; odamtrain never disables weights_only')
    try:
        facts = check_archive(filename, allowed_globals())
        with only_stand_ins():
            loaded = torch.load(filename, map_location=map_location, weights_only=True)
        checkpoint = Rebuilder(budget=2 * facts.content_bytes).rebuild(loaded)
    except Refused as e:
        raise CheckpointSecurityError(refusal.format(filename, e)) from None
    except Unreadable as e:
        raise CheckpointError(f'cannot load checkpoint {filename}: {e}') from None
    except pickle.UnpicklingError as e:
        raise CheckpointSecurityError(refusal.format(filename, _torch_refusal(str(e)))) from None
    except Exception as e:  # torch / zip raise many types for broken files
        cause = f'{type(e).__name__}: {e}' if str(e) else type(e).__name__
        raise CheckpointError(f'cannot load checkpoint {filename}: {cause}') from None
    drop_config_text(checkpoint)
    return checkpoint


def _torch_refusal(message: str) -> str:
    """The reason inside torch's re-wrapped weights-only error message."""
    body = message.split('WeightsUnpickler error:')[-1].split('\n\nCheck the documentation')[0]
    return ' '.join(body.split()) or message


def drop_config_text(checkpoint) -> None:
    """Remove the config source mmengine stores in a checkpoint (:data:`CONFIG_TEXT_KEYS`),
    in place: mmengine executes it when it resumes or infers from the checkpoint."""
    for *parents, key in CONFIG_TEXT_KEYS:
        node = checkpoint
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)


def check_resumable(checkpoint, filename: str) -> None:
    """Check that ``checkpoint`` holds what mmengine's ``Runner.resume`` reads, with the types
    it needs: ``meta`` (``epoch``, ``iter``, ``seed``), ``state_dict``, ``message_hub``, and
    ``optimizer`` / ``param_schedulers`` where present.

    Args:
        checkpoint: a loaded checkpoint (:func:`safe_load_checkpoint`).
        filename: its file, for the message.

    Raises:
        CheckpointError: naming ``filename`` and what is missing or of the wrong type.
    """
    def expect(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f'cannot resume from checkpoint {filename}: {what}')

    def is_int(v, low=0, high=None) -> bool:
        return type(v) is int and v >= low and (high is None or v < high)

    expect(isinstance(checkpoint, dict), f'expected a dict, got {type(checkpoint).__name__}')
    meta = checkpoint.get('meta')
    expect(isinstance(meta, dict), "no 'meta' dict")
    for key in ('epoch', 'iter'):
        expect(is_int(meta.get(key)), f"meta[{key!r}] is {meta.get(key)!r}; expected an int "
                                      '>= 0')
    seed = meta.get('seed')
    expect(seed is None or is_int(seed, 0, 2 ** 32),
           f"meta['seed'] is {seed!r}; expected None or an int in [0, 2**32)")
    state = checkpoint.get('state_dict')
    expect(isinstance(state, dict) and all(type(k) is str and torch.is_tensor(v)
                                           for k, v in state.items()),
           "'state_dict' is not a dict of names to tensors")
    hub = checkpoint.get('message_hub')
    expect(isinstance(hub, dict) and all(isinstance(hub.get(k), dict) for k in
                                         ('log_scalars', 'runtime_info', 'resumed_keys')),
           "'message_hub' is not a dict of log_scalars, runtime_info and resumed_keys dicts")
    expect(all(type(k) is str and isinstance(v, HistoryBuffer)
               for k, v in hub['log_scalars'].items()),
           "message_hub['log_scalars'] holds something other than HistoryBuffers")
    expect(all(type(k) is str and type(v) is bool for k, v in hub['resumed_keys'].items()),
           "message_hub['resumed_keys'] is not a dict of names to booleans")
    if 'optimizer' in checkpoint:
        optim = checkpoint['optimizer']
        groups = optim.get('param_groups') if isinstance(optim, dict) else None
        expect(isinstance(optim, dict) and isinstance(optim.get('state'), dict)
               and isinstance(groups, list)
               and all(isinstance(g, dict) and isinstance(g.get('params'), list)
                       and all(is_int(p) for p in g['params']) for g in groups),
               "'optimizer' is not a torch optimizer state (state, param_groups of params)")
    if 'param_schedulers' in checkpoint:
        schedulers = checkpoint['param_schedulers']
        lists = schedulers.values() if isinstance(schedulers, dict) else [schedulers]
        expect(all(isinstance(s, list) and all(isinstance(d, dict) for d in s)
                   for s in lists),
               "'param_schedulers' is not a list (or a dict of lists) of state dicts")


# ----------------------------------------------------------------- plain checkpoints
def to_plain(obj, memo: dict | None = None):
    """Recursively replace numpy arrays by tensors, numpy scalars by Python numbers and
    ``HistoryBuffer`` by a tagged dict of tensors (``weights_only``-loadable); shared objects
    stay shared.

    Args:
        obj: what a checkpoint holds (dicts, lists, tuples, tensors, numpy objects, ...).
        memo: id -> converted object, so that shared objects stay shared (internal).

    Returns:
        The converted object.
    """
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        result = {HISTORY_BUFFER_KEY: dict(log=torch.from_numpy(np.asarray(log, np.float64)),
                                           count=torch.from_numpy(np.asarray(count, np.int64)),
                                           max_length=int(obj.max_length))}
    elif isinstance(obj, np.ndarray):
        result = torch.from_numpy(obj.copy())
    elif isinstance(obj, np.generic):
        result = obj.item()
    elif isinstance(obj, dict):
        result = type(obj)((k, to_plain(v, memo)) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        result = type(obj)(to_plain(v, memo) for v in obj)
    else:
        result = obj
    memo[id(obj)] = result
    return result


def from_plain(obj):
    """Inverse of :func:`to_plain` for ``HistoryBuffer`` (arrays stay tensors), with the checks
    of :class:`.rebuild.Rebuilder`.

    Args:
        obj: a loaded checkpoint's content.

    Returns:
        The object with its ``HistoryBuffer`` s rebuilt.

    Raises:
        CheckpointError: naming what is wrong.
    """
    try:
        return Rebuilder().rebuild(obj)
    except Refused as e:
        raise CheckpointError(f'plain checkpoint: {e}') from None


def register_safe_local_loader() -> None:
    """Make :func:`safe_load_checkpoint` mmengine's loader for local paths (idempotent)."""
    CheckpointLoader.register_scheme(prefixes='', force=True)(safe_load_checkpoint)
