"""Audit a trained detector's explanations on its test set: pointing game, energy pointing
game, compactness, ODI and (with --deletion-steps) deletion / insertion AUC of each
method's heat maps on the well-detected objects.

    python tools/audit.py CONFIG CHECKPOINT [--methods odam gradcam gradcampp drise vps]
        [--target score] [--iou-thr 0.9] [--max-images 0] [--deletion-steps 0]
        [--evidence odam|vps|class|iou] [--drise-masks 1000] [--vps-regions 64]
        [--vps-steps N] [--out audit.json] [--cfg-options ...]

Budgets: D-RISE runs --drise-masks masked images per image; VPS about 2 x regions x steps
per object (regions x (regions + 1) without --vps-steps).
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import exit_on_data_error  # noqa: E402

from odamtrain.apis import METHODS  # noqa: E402
from odamtrain.evaluation.explanation_audit import (  # noqa: E402
    METRIC_DIRECTIONS,
    audit_explanations,
)
from odamtrain.evaluation.functional import EVIDENCES  # noqa: E402
from odamtrain.explain import TARGETS  # noqa: E402
from odamtrain.utils import atomic_write_text  # noqa: E402

SHORT = dict(pointing_game='PG', energy_pointing_game='energyPG', compactness='compact',
             odi='ODI', deletion_auc='deletion', insertion_auc='insertion')


def parse_args():
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description='Explanation audit of a trained detector')
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--methods', nargs='+', default=['odam'], choices=METHODS)
    p.add_argument('--target', default='score', choices=TARGETS)
    p.add_argument('--iou-thr', type=float, default=0.9,
                   help='well-detected objects: detection-GT IoU above this')
    p.add_argument('--max-images', type=int, default=0, help='only the first N images')
    p.add_argument('--deletion-steps', type=int, default=0,
                   help='> 0: deletion / insertion AUCs with this many steps (paper: 100)')
    p.add_argument('--evidence', default='odam', choices=EVIDENCES,
                   help='what deletion / insertion measure (see faithfulness.py)')
    p.add_argument('--drise-masks', type=int, default=1000, help='D-RISE masks (paper 5000)')
    p.add_argument('--vps-regions', type=int, default=64, help='VPS sub-regions (grid)')
    p.add_argument('--vps-steps', type=int, default=None,
                   help='VPS greedy steps (default: all regions)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', help='write the table as JSON')
    p.add_argument('--device', default='cpu')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args()


def main():
    args = parse_args()
    from mmdet.apis import init_detector
    from mmengine.runner import Runner
    from mmengine.utils import ProgressBar
    with exit_on_data_error():
        model = init_detector(args.config, args.checkpoint, device=args.device,
                              cfg_options=args.cfg_options)
        loader_cfg = model.cfg.test_dataloader.copy()
        loader_cfg.update(batch_size=1, num_workers=0, persistent_workers=False)
        loader = Runner.build_dataloader(loader_cfg)
    n = min(len(loader.dataset), args.max_images or len(loader.dataset))
    table = audit_explanations(model, loader, args.methods, args.target, args.iou_thr,
                               args.max_images, args.deletion_steps, args.evidence,
                               dict(num_masks=args.drise_masks, seed=args.seed),
                               dict(regions=args.vps_regions, max_steps=args.vps_steps),
                               args.seed, ProgressBar(n))
    print()
    names = [k for k in next(iter(table.values())) if k not in ('objects', 'images')]
    heads = [SHORT[k] + ('(-)' if METRIC_DIRECTIONS[k] == 'lower' else '(+)') for k in names]
    print(f'{"method":10s}' + ''.join(f'{h:>12s}' for h in heads) + f'{"objects":>9s}')
    for method, row in table.items():
        print(f'{method:10s}' + ''.join(f'{row[k]:12.4f}' for k in names)
              + f'{row["objects"]:9d}')
    if args.out:
        atomic_write_text(json.dumps(dict(
            config=args.config, checkpoint=args.checkpoint, target=args.target,
            iou_thr=args.iou_thr, deletion_steps=args.deletion_steps, evidence=args.evidence,
            drise_masks=args.drise_masks, vps_regions=args.vps_regions,
            vps_steps=args.vps_steps, results=table), indent=1), args.out)


if __name__ == '__main__':
    main()
