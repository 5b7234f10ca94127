"""Audit a trained detector's explanations on its test set: pointing game, energy pointing
game, compactness, ODI and (with --deletion-steps) deletion / insertion AUC, highest score
and success of each method's heat maps on the well-detected objects and (with --sets) the
missed and misclassified ones. Writes OUT_DIR/audit.json, the mean deletion / insertion
curves (audit_curves.png) and the methods' maps of the same objects (audit_methods.png);
prints one table per object set.

    python tools/audit.py CONFIG CHECKPOINT --out-dir DIR
        [--methods odam gradcam gradcampp drise vps] [--target score] [--iou-thr 0.9]
        [--sets detected missed misclassified] [--score-thr 0.3] [--max-images 0]
        [--deletion-steps 0] [--evidence odam|vps|class|iou] [--extent box|image]
        [--drise-masks 1000] [--drise-estimator contrast|coverage|mean] [--vps-regions 64]
        [--vps-segmentation slico|grid] [--vps-search windowed|greedy] [--vps-head 1]
        [--vps-window 6]
        [--vps-steps N] [--cfg-options ...]

Budgets: D-RISE runs --drise-masks masked images per image; VPS per object
odamtrain.explain.vps_forward_count images: 2 x regions + 2 x window x (regions - 1)
windowed (head 1), regions x (regions + 1) + 2 greedy.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import exit_on_data_error, float_between, int_at_least, test_loader  # noqa: E402

from odamtrain.apis import METHODS, init_detector  # noqa: E402
from odamtrain.evaluation.explanation_audit import (  # noqa: E402
    EXTENTS,
    SETS,
    AuditSettings,
    collect_explanation_scores,
)
from odamtrain.evaluation.functional import EVIDENCES  # noqa: E402
from odamtrain.explain import (  # noqa: E402
    DRISE_ESTIMATORS,
    TARGETS,
    VPS_SEARCHES,
    VPS_SEGMENTATIONS,
)
from odamtrain.visualization import format_audit_table, write_audit_report  # noqa: E402


def parse_args():
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description='Explanation audit of a trained detector')
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--out-dir', required=True)
    p.add_argument('--methods', nargs='+', default=['odam'], choices=METHODS)
    p.add_argument('--target', default='score', choices=TARGETS)
    p.add_argument('--iou-thr', type=float_between(0, 1), default=0.9,
                   help='well-detected objects: detection-GT IoU above this')
    p.add_argument('--sets', nargs='+', default=['detected'], choices=SETS,
                   help='object sets: well detected, and the failure sets')
    p.add_argument('--score-thr', type=float_between(0, 1), default=0.3,
                   help='a GT is missed if no detection scoring at least this finds it; '
                   'an explanation succeeds if insertion brings the score back to it')
    p.add_argument('--max-images', type=int_at_least(0), default=0,
                   help='only the first N images (0: all)')
    p.add_argument('--deletion-steps', type=int_at_least(0), default=0,
                   help='> 0: deletion / insertion AUCs with this many steps (paper: 100)')
    p.add_argument('--evidence', default='odam', choices=EVIDENCES,
                   help='what deletion / insertion measure (see faithfulness.py)')
    p.add_argument('--extent', default='box', choices=EXTENTS,
                   help='pixels changed in all: the GT box area (ODAM) or the image (VPS)')
    p.add_argument('--drise-masks', type=int_at_least(1), default=1000,
                   help='D-RISE masks (paper 5000)')
    p.add_argument('--drise-estimator', default='contrast', choices=DRISE_ESTIMATORS,
                   help="D-RISE: mean weight of the masks that keep a pixel minus that of "
                   "those that remove it ('contrast'), of those that keep it ('coverage', "
                   "xaitk) or the paper's sum / N ('mean')")
    p.add_argument('--vps-regions', type=int_at_least(2), default=64,
                   help='VPS sub-regions, about')
    p.add_argument('--vps-segmentation', default='slico', choices=VPS_SEGMENTATIONS,
                   help='VPS sub-regions: SLICO superpixels or a grid')
    p.add_argument('--vps-search', default='windowed', choices=VPS_SEARCHES,
                   help="VPS search: 'greedy' (the paper) or 'windowed' (budgeted)")
    p.add_argument('--vps-head', type=int_at_least(1), default=1,
                   help='windowed VPS: greedy steps first')
    p.add_argument('--vps-window', type=int_at_least(0), default=6,
                   help='windowed VPS: regions re-evaluated per step after the head '
                   '(0: the rest by their last gains)')
    p.add_argument('--vps-steps', type=int_at_least(1), default=None,
                   help='VPS search steps (default: all regions)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args()


def main():
    args = parse_args()
    from mmengine.utils import ProgressBar
    with exit_on_data_error():
        model = init_detector(args.config, args.checkpoint, args.device, args.cfg_options)
        loader = test_loader(model)
    n = min(len(loader.dataset), args.max_images or len(loader.dataset))
    settings = AuditSettings(
        methods=args.methods, target=args.target, iou_thr=args.iou_thr, sets=args.sets,
        score_thr=args.score_thr, deletion_steps=args.deletion_steps, evidence=args.evidence,
        extent=args.extent,
        drise=dict(num_masks=args.drise_masks, estimator=args.drise_estimator,
                   seed=args.seed),
        vps=dict(regions=args.vps_regions, segmentation=args.vps_segmentation,
                 search=args.vps_search, head=args.vps_head, window=args.vps_window,
                 max_steps=args.vps_steps),
        seed=args.seed)
    if osp.exists(osp.join(args.out_dir, 'audit.json')):
        print(f'replacing the audit of an earlier run in {args.out_dir}')
    raw = collect_explanation_scores(model, loader, settings, max_images=args.max_images,
                                     progress=ProgressBar(n))
    table = write_audit_report(raw, args.out_dir, dict(
        config=args.config, checkpoint=args.checkpoint, max_images=args.max_images,
        **settings.to_dict()))
    print('\n' + format_audit_table(table))


if __name__ == '__main__':
    main()
