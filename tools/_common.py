"""What the tools share."""
import argparse
import contextlib
import os
import os.path as osp
import subprocess
import sys
import time

from mmengine.config import Config, DictAction

import odamtrain  # noqa: F401  (registers odamtrain's modules, safe checkpoint I/O)
from odamtrain.datasets import OdgtError
from odamtrain.engine import CheckpointError
from odamtrain.explain import UnsupportedDetectorError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# the detection metrics of tools/compare_nms.py's rows (CrowdHumanDetMetric's keys)
DETECTION_METRICS = ['AP50', 'MR-2', 'JI', 'recall', 'crowd_recall', 'sparse_recall']


def run_logged(cmd: list, log: str, what: str) -> float:
    """Run ``cmd`` from the repository root with its output appended to ``log``; seconds
    taken. A failure stops with the log's last lines."""
    start = time.perf_counter()
    with open(log, 'a') as f:
        f.write(f'\n$ {" ".join(cmd)}\n')
        f.flush()
        code = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if code:
        with open(log) as f:
            tail = ''.join(f.readlines()[-15:])
        raise SystemExit(f'{what} failed (exit {code}); {log}:\n{tail}')
    return time.perf_counter() - start


def build_runner(cfg):
    """mmengine's runner for ``cfg``: ``runner_type`` if the config names one (odamtrain's
    configs name ``OdamRunner``), else :class:`odamtrain.engine.OdamRunner`."""
    from mmengine.registry import RUNNERS

    from odamtrain.engine import OdamRunner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return OdamRunner.from_cfg(cfg)


def test_loader(model):
    """The model's test dataloader with one image per batch and no worker processes (the
    audit and the benchmarks)."""
    from mmengine.runner import Runner
    cfg = model.cfg.test_dataloader.copy()
    cfg.update(batch_size=1, num_workers=0, persistent_workers=False)
    return Runner.build_dataloader(cfg)


def preprocessed_test_images(model, num: int) -> list:
    """The first ``num`` test images through the model's data preprocessor (inference)."""
    batches = []
    for data in test_loader(model):
        batches.append(model.data_preprocessor(data, False))
        if len(batches) == num:
            break
    return batches


@contextlib.contextmanager
def exit_on_data_error():
    """Turn a bad data folder, annotation or checkpoint, or a detector odamtrain does not
    explain, into a one-line error, exit code 2."""
    try:
        yield
    except (OdgtError, CheckpointError, FileNotFoundError, UnsupportedDetectorError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)


def int_at_least(low: int):
    """argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
        if value < low:
            raise argparse.ArgumentTypeError(f'{value} is less than {low}')
        return value
    return parse


def float_between(low: float, high: float):
    """argparse type: a number in [low, high]."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f'{value} is not in [{low}, {high}]')
        return value
    return parse


def add_common_args(parser) -> None:
    """mmdet's shared flags: --work-dir, --cfg-options, --launcher, --local_rank."""
    parser.add_argument('--work-dir', help='the dir to save logs, checkpoints and metrics')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (e.g. '
                             'train_cfg.max_epochs=3)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args) -> Config:
    """The config with --cfg-options merged, the launcher and the work dir (default
    ./work_dirs/<config name>) set, as mmdet's tools do."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg
