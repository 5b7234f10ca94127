"""What tools/train.py and tools/test.py share."""
import contextlib
import sys

import odamtrain  # noqa: F401  (registers odamtrain's modules, safe checkpoint I/O)
from odamtrain.datasets import OdgtError
from odamtrain.engine import CheckpointSecurityError


def build_runner(cfg):
    """mmengine's runner for ``cfg``: ``runner_type`` if the config names one (odamtrain's
    configs name ``OdamRunner``), else :class:`odamtrain.engine.OdamRunner`."""
    from mmengine.registry import RUNNERS

    from odamtrain.engine import OdamRunner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return OdamRunner.from_cfg(cfg)


@contextlib.contextmanager
def exit_on_data_error():
    """Turn a bad data folder, annotation or checkpoint into a one-line error, exit code 2."""
    try:
        yield
    except (OdgtError, CheckpointSecurityError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
