"""Train a detector with odamtrain loaded (mmdet's tools/train.py flags).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--cfg-options k=v ...] [--launcher none|pytorch]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import add_common_args, build_runner, exit_on_data_error, load_config  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description='Train a detector (odamtrain)')
    p.add_argument('config', help='train config file path')
    p.add_argument('--amp', action='store_true', help='automatic mixed precision (GPU)')
    p.add_argument('--auto-scale-lr', action='store_true', help='scale the LR by batch size')
    p.add_argument('--resume', nargs='?', type=str, const='auto',
                   help='resume from CKPT, or without a value from the last complete '
                        'checkpoint in the work dir')
    add_common_args(p)
    return p.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    with exit_on_data_error():
        build_runner(cfg).train()


if __name__ == '__main__':
    main()
