"""The ODAM paper's Table 5 on one checkpoint: NMS, Soft-NMS and Odam-NMS on the test set,
with AP50, MR^-2, JI, recall (all / crowd / sparse) and seconds per image; optionally the
T_l x T_h sweep of the paper's Fig. 9.

    python tools/compare_nms.py CONFIG CHECKPOINT [--iou 0.5] [--corr-low 0.2] [--corr-high 0.8]
        [--map-mode windows] [--map-features towers] [--sweep] [--out table.json]
        [--cfg-options ...]

Works for every detector odamtrain covers (its head's test-time NMS is switched in the
config; the runner installs Odam-NMS, same weights). mmdet's CrowdDet
(``MultiInstanceRoIHead``) has its own Set-NMS, which is its one row (no sweep).
"""
import argparse
import copy
import json
import os.path as osp
import sys
import time

from mmengine.config import Config, DictAction

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import build_runner, exit_on_data_error, float_between  # noqa: E402

from odamtrain.explain import build_adapter  # noqa: E402
from odamtrain.models import (  # noqa: E402
    MAP_KEYS,
    odam_nms_candidates,
    odam_nms_results,
    odam_nms_select,
)
from odamtrain.utils import atomic_write_text  # noqa: E402

COLUMNS = [('AP50', 'AP50'), ('MR-2', 'MR^-2'), ('JI', 'JI'), ('recall', 'recall'),
           ('crowd_recall', 'crowd'), ('sparse_recall', 'sparse')]


def run(cfg, checkpoint, nms, work_dir):
    """Test ``checkpoint`` with ``nms`` as the test-time NMS -> (metrics, s/img)."""
    cfg = copy.deepcopy(cfg)
    test_cfg = cfg.model.test_cfg.rcnn if 'rcnn' in cfg.model.test_cfg else cfg.model.test_cfg
    test_cfg.nms = nms
    cfg.load_from, cfg.work_dir, cfg.log_level = checkpoint, work_dir, 'WARNING'
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', [])  # detection metrics only
                        if h.get('type') != 'ExplanationAuditHook']
    runner = build_runner(cfg)
    start = time.perf_counter()
    metrics = runner.test()
    seconds = time.perf_counter() - start
    metrics = {k.split('/')[-1]: v for k, v in metrics.items()}
    return metrics, seconds / len(runner.test_dataloader.dataset)


def nms_variants(cfg, args) -> list:
    """[(name, test-time NMS config)] that the config's detector can run: NMS, Soft-NMS and
    Odam-NMS, or CrowdDet's own Set-NMS (its head reads only the IoU threshold)."""
    if cfg.model.get('roi_head', {}).get('type') == 'MultiInstanceRoIHead':
        return [('Set-NMS', dict(type='nms', iou_threshold=args.iou))]
    test_cfg = cfg.model.get('test_cfg') or {}
    own = test_cfg.get('rcnn', test_cfg).get('nms') or {}  # the config's own map settings
    odam = dict(type='odam_nms', iou_threshold=args.iou,  # (thresholds: the arguments')
                **{k: own[k] for k in MAP_KEYS + ('map_score_thr',)
                   if k in own and k != 'keep_heatmaps'})
    if args.map_mode:
        odam['mode'] = args.map_mode
    if args.map_features:
        odam['features'] = args.map_features
    return [('NMS', dict(type='nms', iou_threshold=args.iou)),
            ('Soft-NMS', dict(type='soft_nms', iou_threshold=args.iou, min_score=0.05)),
            (f'Odam-NMS ({args.corr_low}, {args.corr_high})',
             dict(odam, corr_low=args.corr_low, corr_high=args.corr_high))]


def sweep(cfg, checkpoint, settings: list, odam: dict) -> list:
    """Odam-NMS for every (T_l, T_h) in ``settings`` on the test set, with the candidates
    and their maps computed once per batch (they do not depend on the thresholds).
    ``odam``: the Odam-NMS config (``iou_threshold``, map keys). Returns [(setting,
    metrics)]."""
    cfg = copy.deepcopy(cfg)
    cfg.load_from, cfg.log_level = checkpoint, 'WARNING'
    cfg.work_dir = cfg.get('work_dir') or 'work_dirs/compare_nms/sweep'
    runner = build_runner(cfg)
    runner.load_checkpoint(checkpoint)
    model, loader = runner.model.eval(), runner.test_dataloader
    evaluators = []
    for _ in settings:
        evaluator = runner.build_evaluator(cfg.test_evaluator)
        evaluator.dataset_meta = loader.dataset.metainfo
        evaluators.append(evaluator)
    adapter = build_adapter(model)
    max_per_img = adapter.test_cfg.get('max_per_img', -1)
    for batch in loader:
        data = model.data_preprocessor(batch, False)
        fwd = adapter.forward(data['inputs'], data['data_samples'])
        cands = odam_nms_candidates(adapter, fwd, odam)
        for (low, high), evaluator in zip(settings, evaluators):
            nms = dict(odam, corr_low=low, corr_high=high)
            results = odam_nms_results(odam_nms_select(cands, nms, max_per_img), fwd.metas,
                                       nms)
            samples = model.add_pred_to_datasample(
                [s.clone() for s in data['data_samples']], results)
            evaluator.process(data_samples=samples, data_batch=batch)
    return [(setting, {k.split('/')[-1]: v for k, v in
                       evaluator.evaluate(len(loader.dataset)).items()})
            for setting, evaluator in zip(settings, evaluators)]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--iou', type=float_between(0, 1), default=0.5,
                   help='T_iou, also NMS / Soft-NMS IoU')
    p.add_argument('--corr-low', type=float, default=0.2, help='T_l')
    p.add_argument('--corr-high', type=float, default=0.8, help='T_h')
    p.add_argument('--map-mode', choices=['fast', 'windows', 'exact'],
                   help="Odam-NMS's map mode (default: the config's)")
    p.add_argument('--map-features', choices=['auto', 'towers'],
                   help="A of Odam-NMS's maps (default: the config's; 'towers': the dense "
                        "head's towers' outputs)")
    p.add_argument('--sweep', action='store_true', help='also sweep T_l x T_h (Fig. 9)')
    p.add_argument('--work-dir', default='work_dirs/compare_nms')
    p.add_argument('--out', help='write the rows as JSON')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args()


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    variants = nms_variants(cfg, args)

    header = f'{"method":28s}' + ''.join(f'{name:>8s}' for _, name in COLUMNS) + f'{"s/img":>8s}'
    print(header, flush=True)
    rows = []
    with exit_on_data_error():
        for i, (name, nms) in enumerate(variants):
            metrics, s_img = run(cfg, args.checkpoint, nms, osp.join(args.work_dir, str(i)))
            rows.append(dict(method=name, nms=nms, s_per_img=s_img, **metrics))
            print(f'{name:28s}' + ''.join(f'{metrics.get(key, float("nan")):>8.4f}'
                                          for key, _ in COLUMNS) + f'{s_img:>8.3f}', flush=True)
    odam = variants[-1][1]  # the thresholds of the sweep replace its (T_l, T_h)
    if args.sweep and odam['type'] == 'odam_nms':
        settings = [(low, high) for low in (0.0, 0.1, 0.2, 0.3, 0.4)
                    for high in (0.6, 0.7, 0.8, 0.9, 1.01)]
        print(f'\nT_l x T_h sweep (T_iou {args.iou}; maps computed once per image)')
        with exit_on_data_error():
            for (low, high), metrics in sweep(cfg, args.checkpoint, settings, odam):
                name = f'Odam-NMS ({low}, {high})'
                rows.append(dict(method=name, nms=dict(odam, corr_low=low, corr_high=high),
                                 **metrics))
                print(f'{name:28s}' + ''.join(f'{metrics.get(key, float("nan")):>8.4f}'
                                              for key, _ in COLUMNS), flush=True)
    if args.out:
        atomic_write_text(json.dumps(rows, indent=1), args.out)


if __name__ == '__main__':
    main()
