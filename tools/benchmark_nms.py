"""Benchmark Odam-NMS against mmcv's nms on CPU, side by side in one run:

* the operator alone for 100 / 1000 / 5000 candidates (random boxes; heat maps 50 x 67, the
  size Odam-NMS correlates at), median of --repeats;
* with ``--pipeline CONFIG CHECKPOINT``: the whole test-time prediction (``model.predict``
  on preprocessed images: backbone, head, candidates, maps, suppression) with NMS and with
  Odam-NMS (maps in 'fast' and in 'windows' mode, of A = the head's towers, and of only
  the candidates scoring >= 0.05 / 0.1), interleaved image by image on the same --images
  val images, seconds per image and ratio to NMS; then where Odam-NMS's time goes,
  stage by stage through the same functions its ``predict`` calls (forward: backbone, neck,
  head (and RPN, RoI head); candidates: what reaches NMS; maps: their ODAM maps; map
  vectors: resized to short edge 50 and normalised; walk: IoU, correlation and the greedy
  walk), with the number of maps computed and of kept boxes per image.
* with ``--accuracy CONFIG CHECKPOINT [CHECKPOINT ...]``: what each choice of maps costs in
  detection quality, on the whole test set of each checkpoint (e.g. one per seed): AP50, JI
  and crowd recall of Odam-NMS at (T_l, T_h) = (0.2, 0.8) and (0.4, 0.8) with each of the
  pipeline's map variants (maps computed once per image and variant; plain NMS is the limit
  (-1, 1.01) of each), mean and std over the checkpoints and the paired difference to the
  default 'fast' maps.

    python tools/benchmark_nms.py [--counts 100 1000 5000] [--repeats 5] [--threads 2]
        [--pipeline CONFIG CHECKPOINT --images 20]
        [--accuracy CONFIG CHECKPOINT [CHECKPOINT ...] --out rows.json]
"""
import argparse
import json
import os.path as osp
import statistics
import time

import torch
from mmcv.ops import nms

from odamtrain.models import odam_nms


def timed(fn, args, repeats):
    """(median seconds of fn(*args) over repeats after a warm-up, its last result)"""
    out = fn(*args)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def map_variants(two_stage: bool) -> dict:
    """{name: Odam-NMS config} of the map choices compared (the first is the default)."""
    odam = dict(type='odam_nms', iou_threshold=0.5, corr_low=0.2, corr_high=0.8)
    variants = {'Odam-NMS fast': dict(odam, mode='fast')}
    if not two_stage:  # A = the FPN level without its GroupNorm term; A = the towers
        variants['Odam-NMS windows'] = dict(odam, mode='windows')
        variants['Odam-NMS towers'] = dict(odam, features='towers')
    for thr in (0.05, 0.1):  # maps only of the candidates scoring >= thr
        variants[f'fast, maps >= {thr}'] = dict(odam, mode='fast', map_score_thr=thr)
    return variants


def pipeline(config: str, checkpoint: str, num_images: int) -> None:
    """s/img of model.predict with NMS vs Odam-NMS on the same preprocessed images."""
    from _common import preprocessed_test_images
    from mmengine.config import Config

    from odamtrain.apis import init_detector
    cfg = Config.fromfile(config)
    two_stage = 'roi_head' in cfg.model
    # Odam-NMS installed in the head (its NMS is then chosen per call below)
    (cfg.model.test_cfg.rcnn if two_stage else cfg.model.test_cfg).nms.type = 'odam_nms'
    model = init_detector(cfg, checkpoint, device='cpu')
    test_cfg = model.roi_head.test_cfg if two_stage else model.bbox_head.test_cfg
    batches = preprocessed_test_images(model, num_images)
    variants = {'NMS': dict(type='nms', iou_threshold=0.5), **map_variants(two_stage)}
    times = {name: [] for name in variants}
    with torch.no_grad():
        for r in range(2):  # round 0 warms up on the first image only
            for b in batches[:1] if r == 0 else batches:
                for name, nms_cfg in variants.items():
                    test_cfg.nms = nms_cfg
                    t = time.perf_counter()
                    model.predict(b['inputs'], b['data_samples'])
                    if r:
                        times[name].append(time.perf_counter() - t)
    base = statistics.mean(times['NMS'])
    print(f'{"pipeline":18s}{"s/img":>9s}{"ratio":>8s}   ({len(batches)} images, {config})')
    for name, ts in times.items():
        print(f'{name:18s}{statistics.mean(ts):>9.4f}{statistics.mean(ts) / base:>8.2f}')
    print(f'\nwhere the time goes (s/img), {len(batches)} images')
    print(f'{"variant":18s}' + ''.join(f'{s:>12s}' for s in STAGES) +
          f'{"maps/img":>10s}{"kept/img":>10s}')
    for name, nms_cfg in list(variants.items())[1:]:
        test_cfg.nms = nms_cfg
        stages = {s: 0.0 for s in STAGES}
        counts = [0, 0]
        with torch.no_grad():
            for b in batches:
                for stage, secs in odam_nms_stages(model, b, nms_cfg, counts):
                    stages[stage] += secs / len(batches)
        print(f'{name:18s}' + ''.join(f'{stages[s]:>12.4f}' for s in STAGES) +
              f'{counts[0] / len(batches):>10.1f}{counts[1] / len(batches):>10.1f}')


STAGES = ('forward', 'candidates', 'maps', 'map vectors', 'walk')


def odam_nms_stages(model, batch: dict, nms_cfg: dict, counts: list):
    """Yield (stage, seconds) of Odam-NMS's prediction of one preprocessed batch, through
    the functions its ``predict`` calls: the forward, the candidates, their maps, the maps
    as unit vectors (resized to short edge 50) and the walk (IoU, correlation, greedy); adds
    the candidates and the boxes kept to ``counts``."""
    from odamtrain.explain import head_adapter
    from odamtrain.models.odam_nms import (
        add_heatmaps,
        greedy_odam_nms,
        map_vectors,
        odam_nms_settings,
    )
    samples = batch['data_samples']
    metas = [s.metainfo for s in samples]
    t = time.perf_counter()
    x = model.extract_feat(batch['inputs'])
    if 'roi_head' in model.cfg.model:
        adapter = head_adapter(model.roi_head)
        proposals = model.rpn_head.predict(x, samples, rescale=False)
        fwd = adapter.forward_rois(x, proposals, metas)
    else:
        adapter = head_adapter(model.bbox_head)
        fwd = adapter.forward_features(x, metas)
    yield 'forward', time.perf_counter() - t
    t = time.perf_counter()
    cands = adapter.candidates(fwd)
    yield 'candidates', time.perf_counter() - t
    thr = nms_cfg.get('map_score_thr')
    t = time.perf_counter()
    add_heatmaps(adapter, fwd, cands, odam_nms_settings(nms_cfg),
                 None if thr is None else [c.scores >= thr for c in cands])
    yield 'maps', time.perf_counter() - t
    for cand in cands:
        t = time.perf_counter()
        order = cand.scores.sort(0, descending=True)[1]
        mapped = len(cand) if thr is None else int((cand.scores >= thr).sum())
        vectors = map_vectors(cand.heatmaps[order[:mapped]])
        yield 'map vectors', time.perf_counter() - t
        t = time.perf_counter()
        keep = greedy_odam_nms(cand.bboxes[order], vectors, cand.labels[order],
                               nms_cfg['iou_threshold'], nms_cfg['corr_low'],
                               nms_cfg['corr_high'])
        yield 'walk', time.perf_counter() - t
        counts[0] += mapped
        counts[1] += len(keep)


THRESHOLDS = ((-1.0, 1.01), (0.2, 0.8), (0.4, 0.8))  # the first is plain NMS
METRICS = ('AP50', 'JI', 'crowd_recall')


def accuracy(config: str, checkpoints: list, out: str | None) -> None:
    """Detection metrics of each map variant's Odam-NMS over ``checkpoints`` (see above)."""
    from compare_nms import sweep
    from mmengine.config import Config

    from odamtrain.utils import atomic_write_text
    cfg = Config.fromfile(config)
    variants = map_variants('roi_head' in cfg.model)
    rows = []
    if out and osp.exists(out):  # resume: the (checkpoint, maps) pairs already measured
        rows = json.load(open(out))
    for ckpt in checkpoints:
        for name, odam in variants.items():
            if any(r['checkpoint'] == ckpt and r['maps'] == name for r in rows):
                continue
            for (low, high), metrics in sweep(cfg, ckpt, list(THRESHOLDS), odam):
                rows.append(dict(checkpoint=ckpt, maps=name, corr_low=low, corr_high=high,
                                 **{k: metrics[k] for k in METRICS}))
                print(json.dumps(rows[-1]), flush=True)
            if out:
                atomic_write_text(json.dumps(rows, indent=1), out)
    print(f'\n{len(checkpoints)} checkpoints: mean (std) [paired difference to '
          f'{next(iter(variants))}, mean +- std]')
    for low, high in THRESHOLDS:
        for name in variants:
            line = f'{name:18s} ({low:>4}, {high:>4})'
            for key in METRICS:
                values = [r[key] for r in rows if r['maps'] == name and r['corr_low'] == low]
                base = [r[key] for r in rows if r['maps'] == next(iter(variants))
                        and r['corr_low'] == low]
                diff = [v - b for v, b in zip(values, base)]
                std, dstd = ((statistics.stdev(values), statistics.stdev(diff))
                             if len(values) > 1 else (0.0, 0.0))
                line += (f'  {key} {statistics.mean(values):.4f} ({std:.4f}) '
                         f'[{statistics.mean(diff):+.4f} +- {dstd:.4f}]')
            print(line)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--counts', nargs='+', type=int, default=[100, 1000, 5000])
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--pipeline', nargs=2, metavar=('CONFIG', 'CHECKPOINT'))
    p.add_argument('--images', type=int, default=20)
    p.add_argument('--accuracy', nargs='+', metavar='CONFIG CHECKPOINT')
    p.add_argument('--out', help='--accuracy: write its rows as JSON')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.accuracy:
        if len(args.accuracy) < 2:
            p.error('--accuracy takes a config and at least one checkpoint')
        accuracy(args.accuracy[0], args.accuracy[1:], args.out)
        return
    if args.pipeline:
        pipeline(*args.pipeline, args.images)
        return
    print(f'{"N":>6s}{"mmcv nms ms":>13s}{"odam_nms ms":>13s}{"ratio":>8s}{"kept nms":>10s}'
          f'{"kept odam":>11s}')
    for n in args.counts:
        g = torch.Generator().manual_seed(n)
        xy = torch.rand(n, 2, generator=g) * 800
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 150 + 10], 1)
        scores = torch.rand(n, generator=g)
        maps = torch.rand(n, 50, 67, generator=g) ** 4
        t_nms, (_, keep_nms) = timed(nms, (boxes, scores, 0.5), args.repeats)
        t_odam, keep_odam = timed(odam_nms, (boxes, scores, maps, 0.5, 0.2, 0.8), args.repeats)
        kept_nms, kept_odam = len(keep_nms), len(keep_odam)
        print(f'{n:>6d}{t_nms * 1e3:>13.2f}{t_odam * 1e3:>13.2f}{t_odam / t_nms:>8.1f}'
              f'{kept_nms:>10d}{kept_odam:>11d}', flush=True)


if __name__ == '__main__':
    main()
