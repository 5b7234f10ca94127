"""Test a checkpoint with odamtrain loaded (mmdet's tools/test.py flags); prints AP50,
MR^-2 and JI for CrowdHuman configs.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
        [--show-dir DIR] [--cfg-options k=v ...] [--launcher none|pytorch]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import add_common_args, build_runner, exit_on_data_error, load_config  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description='Test (and evaluate) a detector (odamtrain)')
    p.add_argument('config', help='test config file path')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--out', help='dump predictions to a pickle file (.pkl)')
    p.add_argument('--show', action='store_true', help='show predictions in a window')
    p.add_argument('--show-dir', help='draw predictions into images under work_dir/DIR')
    p.add_argument('--wait-time', type=float, default=2, help='interval of --show (s)')
    add_common_args(p)
    return p.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        cfg = trigger_visualization_hook(cfg, args)
    with exit_on_data_error():
        runner = build_runner(cfg)
        if args.out is not None:
            from mmdet.evaluation import DumpDetResults
            if not args.out.endswith(('.pkl', '.pickle')):
                sys.exit('error: --out must be a .pkl file')
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        metrics = runner.test()
    print_metrics(metrics)


def print_metrics(metrics: dict) -> None:
    """One line per metric, CrowdHuman's named as in the papers."""
    names = {'crowd_human/AP50': 'AP50', 'crowd_human/MR-2': 'MR^-2', 'crowd_human/JI': 'JI',
             'crowd_human/recall': 'recall', 'crowd_human/crowd_recall': 'crowd recall',
             'crowd_human/sparse_recall': 'sparse recall'}
    print('\n' + '=' * 40)
    for key, value in metrics.items():
        print(f'{names.get(key, key):>28s}  {value:.4f}' if isinstance(value, float)
              else f'{names.get(key, key):>28s}  {value}')
    print('=' * 40)


if __name__ == '__main__':
    main()
