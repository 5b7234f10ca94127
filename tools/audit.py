"""Audit a trained detector's explanations on its test set: pointing game, energy pointing
game, compactness, ODI and (with --deletion-steps) deletion / insertion AUC, highest score
and success of each method's heat maps on the well-detected objects and (with --sets) the
missed and misclassified ones. Writes OUT_DIR/audit.json, the mean deletion / insertion
curves (audit_curves.png) and the methods' maps of the same objects (audit_methods.png);
prints one table per object set.

    python tools/audit.py CONFIG CHECKPOINT --out-dir DIR
        [--methods odam gradcam gradcampp ssgradcampp drise dhsic vps] [--target score]
        [--iou-thr 0.9]
        [--sets detected missed misclassified] [--score-thr 0.3] [--max-images 0]
        [--deletion-steps 0] [--deletion-baseline noise|black]
        [--evidence odam|vps|class|iou] [--extra-evidences class iou] [--extent box|image]
        [--drise-masks 1000] [--drise-estimator contrast|coverage|mean]
        [--dhsic-designs 500] [--dhsic-grid 8] [--vps-regions 64]
        [--vps-segmentation slico|grid] [--vps-search windowed|greedy] [--vps-head 1]
        [--vps-window 6] [--vps-box-slots 3]
        [--vps-steps N] [--evidence-source detections|candidates] [--hook-settings]
        [--cfg-options ...]

--hook-settings starts from the settings of the config's ExplanationAuditHook (what
tools/test.py would audit: its methods, sets, budgets and max_images); the flags given
override them.

Budgets: D-RISE runs --drise-masks masked images per image, D-HSIC --dhsic-designs; VPS per
object
odamtrain.explain.vps_forward_count images: 2 x regions + 2 x window x (regions - 1)
windowed (head 1), regions x (regions + 1) + 2 greedy.
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import exit_on_data_error, float_between, int_at_least, test_loader  # noqa: E402

from odamtrain.apis import METHODS, init_detector  # noqa: E402
from odamtrain.engine import ExplanationAuditHook  # noqa: E402
from odamtrain.evaluation.explanation_audit import (  # noqa: E402
    DELETION_BASELINES,
    EXTENTS,
    SETS,
    AuditSettings,
    collect_explanation_scores,
)
from odamtrain.evaluation.functional import EVIDENCES  # noqa: E402
from odamtrain.explain import (  # noqa: E402
    DRISE_ESTIMATORS,
    EVIDENCE_SOURCES,
    TARGETS,
    VPS_SEARCHES,
    VPS_SEGMENTATIONS,
    DhsicSettings,
    DriseSettings,
    VpsSettings,
)
from odamtrain.visualization import format_audit_table, write_audit_report  # noqa: E402

# flag -> where it goes in AuditSettings: (field,) or (field, key of the drise / dhsic / vps
# dict)
SETTING_OF_FLAG = {
    'methods': ('methods',), 'target': ('target',), 'iou_thr': ('iou_thr',),
    'sets': ('sets',), 'score_thr': ('score_thr',), 'deletion_steps': ('deletion_steps',),
    'evidence': ('evidence',), 'extent': ('extent',), 'seed': ('seed',),
    'deletion_baseline': ('deletion_baseline',), 'extra_evidences': ('extra_evidences',),
    'drise_masks': ('drise', 'num_masks'), 'drise_estimator': ('drise', 'estimator'),
    'dhsic_designs': ('dhsic', 'num_designs'), 'dhsic_grid': ('dhsic', 'grid'),
    'vps_regions': ('vps', 'regions'), 'vps_segmentation': ('vps', 'segmentation'),
    'vps_search': ('vps', 'search'), 'vps_head': ('vps', 'head'),
    'vps_window': ('vps', 'window'), 'vps_box_slots': ('vps', 'box_slots'),
    'vps_steps': ('vps', 'max_steps')}


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument('--deletion-baseline', default='noise', choices=DELETION_BASELINES,
                   help='what deleted pixels become: uniform noise (ODAM) or black (VPS)')
    p.add_argument('--evidence', default='odam', choices=EVIDENCES,
                   help='what deletion / insertion measure (see faithfulness.py)')
    p.add_argument('--extra-evidences', nargs='*', default=[], choices=EVIDENCES,
                   help="more evidences whose AUCs are read from the same predictions (VPS "
                   "Table 1: --evidence vps --extra-evidences class iou)")
    p.add_argument('--extent', default='box', choices=EXTENTS,
                   help='pixels changed in all: the GT box area (ODAM) or the image (VPS)')
    p.add_argument('--drise-masks', type=int_at_least(1), default=1000,
                   help=f'D-RISE masks (a CPU budget; paper {DriseSettings.num_masks})')
    p.add_argument('--drise-estimator', default=DriseSettings.estimator,
                   choices=DRISE_ESTIMATORS,
                   help="D-RISE: mean weight of the masks that keep a pixel minus that of "
                   "those that remove it ('contrast'), of those that keep it ('coverage', "
                   "xaitk) or the paper's sum / N ('mean')")
    p.add_argument('--dhsic-designs', type=int_at_least(2), default=DhsicSettings.num_designs,
                   help='D-HSIC masked images per image')
    p.add_argument('--dhsic-grid', type=int_at_least(1), default=DhsicSettings.grid,
                   help='D-HSIC cells per side')
    p.add_argument('--vps-regions', type=int_at_least(2), default=VpsSettings.regions,
                   help='VPS sub-regions, about')
    p.add_argument('--vps-segmentation', default=VpsSettings.segmentation,
                   choices=VPS_SEGMENTATIONS,
                   help='VPS sub-regions: SLICO superpixels or a grid')
    p.add_argument('--vps-search', default=VpsSettings.search, choices=VPS_SEARCHES,
                   help="VPS search: 'greedy' (the paper) or 'windowed' (budgeted)")
    p.add_argument('--vps-head', type=int_at_least(1), default=VpsSettings.head,
                   help='windowed VPS: greedy steps first')
    p.add_argument('--vps-window', type=int_at_least(0), default=VpsSettings.window,
                   help='windowed VPS: regions re-evaluated per step after the head '
                   '(0: the rest by their last gains)')
    p.add_argument('--vps-box-slots', type=int_at_least(0), default=VpsSettings.box_slots,
                   help="windowed VPS: places of the window (at most all) given round-robin "
                   "to the regions of the target's box")
    p.add_argument('--vps-steps', type=int_at_least(1), default=None,
                   help='VPS search steps (default: all regions)')
    p.add_argument('--evidence-source', default='detections', choices=EVIDENCE_SOURCES,
                   help="what D-RISE, D-HSIC and VPS read from a perturbed image: mmdet's "
                   "detections, or every prediction before score threshold and NMS")
    p.add_argument('--seed', type=int, default=0, help='noise, D-RISE masks, D-HSIC designs')
    p.add_argument('--hook-settings', action='store_true',
                   help="start from the config's ExplanationAuditHook settings")
    p.add_argument('--device', default='cpu')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments, and as ``given`` the destinations of those named on the command
    line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    args.given = set(vars(parser.parse_args(argv)))
    return args


def config_hook_settings(cfg, config: str) -> tuple[dict, int]:
    """(AuditSettings as a dict, max_images) of ``cfg``'s ExplanationAuditHook, validated as
    when the runner builds it."""
    hooks = [h for h in cfg.get('custom_hooks', [])
             if h.get('type') in ('ExplanationAuditHook', ExplanationAuditHook)]
    if len(hooks) != 1:
        raise SystemExit(f'error: --hook-settings: {config} has {len(hooks)} '
                         'ExplanationAuditHook entries in custom_hooks, expected 1')
    kwargs = {k: v for k, v in hooks[0].items() if k not in ('type', 'priority')}
    hook = ExplanationAuditHook(**kwargs)
    return hook.settings.to_dict(), hook.max_images


def audit_settings(args, given: set, base: dict) -> AuditSettings:
    """``base`` (settings as a dict) with the values of the options in ``given``; --seed
    also seeds D-RISE's masks and D-HSIC's designs, --evidence-source sets the black boxes'
    evidence."""
    settings = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for flag in given & set(SETTING_OF_FLAG):
        field, *key = SETTING_OF_FLAG[flag]
        value = getattr(args, flag)
        if key:
            settings[field] = {**(settings.get(field) or {}), key[0]: value}
        else:
            settings[field] = value
    if 'seed' in given:
        for method in ('drise', 'dhsic'):
            settings[method] = {**(settings.get(method) or {}), 'seed': args.seed}
    if 'evidence_source' in given:
        for method in ('drise', 'dhsic', 'vps'):
            settings[method] = {**(settings.get(method) or {}), 'evidence': args.evidence_source}
    return AuditSettings.build(settings)


def main():
    args = parse_args()
    from mmengine.utils import ProgressBar
    with exit_on_data_error():
        model = init_detector(args.config, args.checkpoint, device=args.device,
                              cfg_options=args.cfg_options)
        loader = test_loader(model)
    if args.hook_settings:
        base, hook_max_images = config_hook_settings(model.cfg, args.config)
        given = args.given
        if 'max_images' not in given:
            args.max_images = hook_max_images
    else:   # every option's value, defaults included
        base, given = {}, set(vars(args))
    settings = audit_settings(args, given, base)
    n = min(len(loader.dataset), args.max_images or len(loader.dataset))
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
