"""Benchmark ODAM heat maps on CPU: batched maps (fast / exact) vs one detector forward vs a
per-prediction autograd loop, for FCOS and Faster R-CNN R50-FPN (random weights: speed does
not depend on them), at two input sizes and N = 10, 100, 1000 predictions.

Every measurement runs in its own subprocess (one after the other, in this one run) so that
its peak memory (max RSS) can be read; times are the median of --repeats runs after a
warm-up (exact mode: one run).

    python tools/benchmark_odam.py [--sizes 512 800] [--counts 10 100 1000] [--repeats 3]
        [--threads 2] [--out docs/benchmark_odam.json]
    # accuracy of fast mode against exact on a trained FCOS:
    python tools/benchmark_odam.py --accuracy CONFIG CHECKPOINT --images IMG [IMG ...]
"""
import argparse
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {'fcos': 'configs/fcos_r50_fpn_crowdhuman.py',
           'faster-rcnn': 'configs/faster-rcnn_r50_fpn_crowdhuman.py'}
LOOP_SAMPLE = 10  # the per-prediction loop is timed on this many predictions


def build(detector: str, n: int):
    """R50-FPN detector keeping exactly ``n`` detections (no score threshold, no
    suppression) so that N is controlled."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(osp.join(REPO, CONFIGS[detector]))
    cfg.model.backbone.init_cfg = None
    keep_all = dict(type='nms', iou_threshold=1.0)
    if detector == 'fcos':
        cfg.model.test_cfg.update(score_thr=0.0, nms_pre=n, max_per_img=n, nms=keep_all)
    else:
        cfg.model.test_cfg.rpn.update(nms_pre=max(1000, n), max_per_img=max(1000, n))
        cfg.model.test_cfg.rcnn.update(score_thr=0.0, max_per_img=n, nms=keep_all)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    model.cfg = cfg
    return model


def batch(model, size: int):
    import torch
    from mmdet.structures import DetDataSample
    inputs = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 50
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                         pad_shape=(size, size), scale_factor=(1.0, 1.0),
                                         batch_input_shape=(size, size)))
    return inputs, [sample]


def loop_maps(model, inputs, samples, det):
    """The slow way: one backward per prediction (score target), then its ODAM map."""
    import torch

    from odamtrain.explain.heatmap import odam_heatmap
    with torch.enable_grad():
        feats = [f.detach().requires_grad_(True) for f in model.extract_feat(inputs)]
        if hasattr(model, 'roi_head'):
            from mmdet.structures.bbox import bbox2roi
            props = model.rpn_head.predict(feats, samples, rescale=False)
            rois = bbox2roi([p.bboxes for p in props])
            a = model.roi_head.bbox_roi_extractor(feats[:4], rois)
            cls, _ = model.roi_head.bbox_head(a)
            prob = cls.softmax(-1)
            for i in range(len(det)):  # each RoI's score, one backward each
                g, = torch.autograd.grad(prob[i, 0], a, retain_graph=True)
                odam_heatmap(g[i:i + 1], a[i:i + 1].detach())
        else:
            head = model.bbox_head
            outs = [head.forward_single(f, s, st) for f, s, st in
                    zip(feats, head.scales, head.strides)]
            for lvl, loc in zip(det.level.tolist(), det.loc.tolist()):
                cls, _, ctr = outs[lvl]
                w = cls.shape[-1]
                y = cls[0, 0, loc // w, loc % w].sigmoid() * ctr[0, 0, loc // w, loc % w].sigmoid()
                g, = torch.autograd.grad(y, feats[lvl], retain_graph=True)
                odam_heatmap(g, feats[lvl].detach())


def worker(args):
    """One measurement: prints {seconds: [...], rss_mb, base_rss_mb, n}."""
    import torch
    torch.set_num_threads(args.threads)
    from odamtrain.apis import explain_batch
    model = build(args.detector, args.count)
    inputs, samples = batch(model, args.size)
    if args.what == 'loop':  # which predictions to loop over (not timed)
        det, = explain_batch(model, inputs, samples, 'odam', 'score', None, None, 'fast', 50)
        det = det[:LOOP_SAMPLE]

    def run():
        with torch.no_grad():
            if args.what == 'forward':
                return len(model.predict(inputs, samples)[0].pred_instances)
        if args.what == 'loop':
            loop_maps(model, inputs, samples, det)
            return len(det)
        explained, = explain_batch(model, inputs, samples, 'odam', 'score', 'gaussian',
                                   'minmax', args.what, 'image')
        return len(explained)

    slow = args.what == 'exact'  # minutes per run: one timed run, no warm-up
    n = None if slow else run()  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(1 if slow else args.repeats):
        t = time.perf_counter()
        n = run()
        times.append(time.perf_counter() - t)
    print(json.dumps(dict(seconds=times, n=n,
                          rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          base_rss_mb=base)))


def accuracy(config: str, checkpoint: str, images: list) -> list:
    """Fast vs exact on a trained model: per FPN level, the cosine between the gradients
    dY/dA and between the ODAM maps (score target, Gaussian Phi) of every detection."""
    import torch
    import torch.nn.functional as F
    from mmdet.apis import init_detector

    from odamtrain.apis import prepare_batch
    from odamtrain.explain.dense import (
        dense_detections,
        dense_grads_exact,
        dense_grads_fast,
        paste_windows,
        record_tower_state,
        window_radius,
    )
    from odamtrain.explain.dense_explainer import EXACT_BELOW_WINDOWS
    from odamtrain.explain.heatmap import box_sigma, odam_heatmap
    model = init_detector(config, checkpoint, device='cpu')
    head = model.bbox_head
    stats = {}
    for path in images:
        inputs, samples = prepare_batch(model, path)
        with torch.no_grad():
            feats = model.extract_feat(inputs)
            with record_tower_state(head) as state:
                cls, reg, ctr = head(feats)
        det = dense_detections(head, [c[0] for c in cls], [r[0] for r in reg],
                               [c[0] for c in ctr], samples[0].metainfo)
        det.img = torch.zeros_like(det.labels)
        scale = torch.tensor([samples[0].metainfo['scale_factor']], dtype=torch.float32)
        for level, feat in enumerate(feats):
            d = det[det.level == level]
            if not len(d):
                continue
            h, w = feat.shape[-2:]
            exact = torch.cat([g for _, g in dense_grads_exact(head, feat, level, d, 'score',
                                                                scale, d.img)])
            win, _ = dense_grads_fast(head, feat, level, d, 'score', scale, d.img, state)
            fast = paste_windows(win, d.loc // w, d.loc % w, (h, w))
            sigma = box_sigma(d.bboxes * scale.repeat(1, 2), head.strides[level])
            m_fast, m_exact = odam_heatmap(fast, feat, sigma), odam_heatmap(exact, feat, sigma)
            both_zero = (m_fast.flatten(1).sum(1) == 0) & (m_exact.flatten(1).sum(1) == 0)
            s = stats.setdefault(level, dict(hw=(h, w), grad=[], maps=[]))
            s['grad'].append(F.cosine_similarity(fast.flatten(1), exact.flatten(1)))
            s['maps'].append(torch.where(both_zero, torch.ones_like(both_zero, dtype=torch.float),
                                         F.cosine_similarity(m_fast.flatten(1),
                                                             m_exact.flatten(1))))
    rows = []
    for level, s in sorted(stats.items()):
        g, m = torch.cat(s['grad']), torch.cat(s['maps'])
        h, w = s['hw']
        window = (2 * window_radius(head) + 1) ** 2
        rows.append(dict(level=level, map_hw=list(s['hw']), n=len(g),
                         fast_used=h * w >= EXACT_BELOW_WINDOWS * window,
                         grad_cos_min=float(g.min()), grad_cos_mean=float(g.mean()),
                         map_cos_min=float(m.min()), map_cos_median=float(m.median()),
                         map_cos_mean=float(m.mean())))
    return rows


def measure(detector, size, count, what, args):
    cmd = [sys.executable, __file__, '--worker', '--detector', detector, '--size', str(size),
           '--count', str(count), '--what', what, '--repeats', str(args.repeats),
           '--threads', str(args.threads)]
    env = dict(os.environ, PYTHONWARNINGS='ignore', PYTHONPATH=REPO)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-3000:]}')
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res['median_s'] = statistics.median(res['seconds'])
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--detectors', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument('--sizes', nargs='+', type=int, default=[512, 800])
    p.add_argument('--counts', nargs='+', type=int, default=[10, 100, 1000])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--exact-max', type=int, default=100,
                   help='skip exact mode above this N (one full head backward per prediction)')
    p.add_argument('--out', default=None, help='write all numbers as JSON')
    p.add_argument('--accuracy', nargs=2, metavar=('CONFIG', 'CHECKPOINT'),
                   help='also compare fast with exact on this trained FCOS and --images')
    p.add_argument('--images', nargs='*', default=[], help='images for --accuracy')
    # worker mode
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--detector', help=argparse.SUPPRESS)
    p.add_argument('--size', type=int, help=argparse.SUPPRESS)
    p.add_argument('--count', type=int, help=argparse.SUPPRESS)
    p.add_argument('--what', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.accuracy:
        import torch
        torch.set_num_threads(args.threads)
        acc = accuracy(*args.accuracy, args.images)
        print(f'fast vs exact on {args.accuracy[1]} ({len(args.images)} images), score target')
        print(f'{"level":>6s}{"map":>9s}{"N":>6s}{"fast used":>11s}{"grad cos min":>14s}'
              f'{"mean":>7s}{"map cos min":>13s}{"median":>8s}{"mean":>7s}')
        for r in acc:
            print(f'{r["level"]:>6d}{"x".join(map(str, r["map_hw"])):>9s}{r["n"]:>6d}'
                  f'{str(r["fast_used"]):>11s}{r["grad_cos_min"]:>14.3f}{r["grad_cos_mean"]:>7.3f}'
                  f'{r["map_cos_min"]:>13.3f}{r["map_cos_median"]:>8.3f}{r["map_cos_mean"]:>7.3f}')
        if args.out:
            from odamtrain.utils import atomic_write_text
            atomic_write_text(json.dumps(acc, indent=1), args.out)
        return
    rows = []
    header = (f'{"detector":12s}{"input":>7s}{"N":>6s}{"forward s":>11s}{"fast maps s":>13s}'
              f'{"fast/fwd":>10s}{"exact maps s":>14s}{"loop s":>10s}{"loop/fast":>11s}'
              f'{"fast MB":>9s}{"maps MB":>9s}')
    print(header)
    for det in args.detectors:
        for size in args.sizes:
            per_pred_loop = None
            for count in args.counts:
                fwd = measure(det, size, count, 'forward', args)
                fast = measure(det, size, count, 'fast', args)
                exact = (measure(det, size, count, 'exact', args)
                         if det == 'fcos' and count <= args.exact_max else None)
                if per_pred_loop is None:
                    loop = measure(det, size, count, 'loop', args)
                    per_pred_loop = loop['median_s'] / loop['n']
                n = fast['n']
                loop_s = per_pred_loop * n  # timed on LOOP_SAMPLE predictions
                fast_maps = fast['median_s'] - fwd['median_s']  # the maps beyond the forward
                exact_maps = exact['median_s'] - fwd['median_s'] if exact else None
                row = dict(detector=det, size=size, n=n, forward_s=fwd['median_s'],
                           fast_total_s=fast['median_s'], fast_maps_s=fast_maps,
                           exact_maps_s=exact_maps, loop_s=loop_s,
                           loop_per_prediction_s=per_pred_loop,
                           fast_peak_rss_mb=fast['rss_mb'],
                           forward_peak_rss_mb=fwd['rss_mb'],
                           output_maps_mb=n * size * size * 4 / 2 ** 20)
                rows.append(row)
                print(f'{det:12s}{size:>7d}{n:>6d}{fwd["median_s"]:>11.3f}{fast_maps:>13.3f}'
                      f'{fast_maps / fwd["median_s"]:>10.2f}'
                      f'{(f"{exact_maps:.3f}" if exact else "-"):>14s}{loop_s:>10.2f}'
                      f'{loop_s / max(fast_maps, 1e-9):>11.1f}{fast["rss_mb"]:>9.0f}'
                      f'{row["output_maps_mb"]:>9.0f}', flush=True)
    print(f'\nfast maps s = (explain time) - (forward time): the cost of all N maps beyond the '
          f'detection itself, at the input size (min-max normalised). loop s = one backward '
          f'per prediction, timed on {LOOP_SAMPLE} predictions and scaled to N. fast MB = peak '
          f'RSS of the fast run, incl. the model and the N output maps (maps MB).')
    if args.out:
        from odamtrain.utils import atomic_write_text
        atomic_write_text(json.dumps(rows, indent=1), args.out)


if __name__ == '__main__':
    main()
