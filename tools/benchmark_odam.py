"""Benchmark ODAM heat maps over the detector families, on the CPU or a GPU: the batched
maps (fast / exact) against one detector forward and against one backward per prediction,
side by side in one run, for R50-FPN detectors of the mmdet zoo (and the zoo's own backbones
for RTMDet and YOLOX) with random weights (speed does not depend on them), at two input
sizes.

Every measurement runs in its own subprocess (one after the other, in this one run) so that
its peak memory (max RSS on the CPU, peak allocated GPU memory on a GPU) can be read; times
are medians of --repeats runs after a warm-up (on a GPU, each run ends with a synchronize).

    python tools/benchmark_odam.py [--families fcos retinanet ...] [--sizes 512 800]
        [--counts 100] [--repeats 3] [--threads 2] [--device cpu|cuda] [--exact]
        [--out docs/benchmark_odam.json]
    # accuracy of fast mode against exact on a trained dense detector:
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
FAMILIES = {  # name -> config (ours for FCOS / Faster R-CNN: one class, CrowdHuman's)
    'fcos': 'configs/fcos_r50_fpn_crowdhuman.py',
    'retinanet': 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'atss': 'mmdet::atss/atss_r50_fpn_1x_coco.py',
    'paa': 'mmdet::paa/paa_r50_fpn_1x_coco.py',
    'gfl': 'mmdet::gfl/gfl_r50_fpn_1x_coco.py',
    'foveabox': 'mmdet::foveabox/fovea_r50_fpn_4xb4-1x_coco.py',
    'tood': 'mmdet::tood/tood_r50_fpn_1x_coco.py',
    'rtmdet-l': 'mmdet::rtmdet/rtmdet_l_8xb32-300e_coco.py',
    'yolox-l': 'mmdet::yolox/yolox_l_8xb8-300e_coco.py',
    'faster-rcnn': 'configs/faster-rcnn_r50_fpn_crowdhuman.py',
    'cascade-rcnn': 'mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py',
    'double-head-rcnn': 'mmdet::double_heads/dh-faster-rcnn_r50_fpn_1x_coco.py',
    'ms-rcnn': 'mmdet::ms_rcnn/ms-rcnn_r50_fpn_1x_coco.py',
    'htc': 'mmdet::htc/htc_r50_fpn_1x_coco.py',
    'scnet': 'mmdet::scnet/scnet_r50_fpn_1x_coco.py',
    'crowddet': 'configs/crowddet-rcnn_r50_fpn_crowdhuman.py',
    'sabl-retinanet': 'mmdet::sabl/sabl-retinanet_r50_fpn_1x_coco.py',
    'sabl-faster-rcnn': 'mmdet::sabl/sabl-faster-rcnn_r50_fpn_1x_coco.py',
    'sabl-cascade-rcnn': 'mmdet::sabl/sabl-cascade-rcnn_r50_fpn_1x_coco.py',
    'grid-rcnn': 'mmdet::grid_rcnn/grid-rcnn_r50_fpn_gn-head_1x_coco.py',
    'sparse-rcnn': 'mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py',
    'yolov3': 'mmdet::yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py',
    'rtmdet-ins-l': 'mmdet::rtmdet/rtmdet-ins_l_8xb32-300e_coco.py',
    'condinst': 'mmdet::condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py',
    'centernet': 'mmdet::centernet/centernet_r18_8xb16-crop512-140e_coco.py',
    'detr': 'mmdet::detr/detr_r50_8xb2-150e_coco.py',
    'dino': 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
}
DEFAULT_N = dict(dino=300)  # DETR-like: all final detections (DINO keeps 300), else 100
LOOP_SAMPLE = 10  # the per-prediction loop is timed on this many predictions


def build(family: str, n: int):
    """The family's detector keeping exactly ``n`` detections (no score threshold, NMS that
    suppresses nothing) so that N is controlled; random weights."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.hub import get_config
    register_all_modules()
    path = FAMILIES[family]
    cfg = get_config(path) if path.startswith('mmdet::') else Config.fromfile(
        osp.join(REPO, path))
    cfg.model.backbone.init_cfg = None
    keep_all = dict(type='nms', iou_threshold=1.0)
    if 'encoder' in cfg.model:  # DETR-like: no NMS
        cfg.model.test_cfg.max_per_img = n
    elif 'roi_head' in cfg.model:
        if cfg.model.test_cfg.get('rpn') is not None:  # (Sparse R-CNN: learned proposals)
            cfg.model.test_cfg.rpn.update(nms_pre=max(1000, n), max_per_img=max(1000, n))
        cfg.model.test_cfg.rcnn.update(score_thr=0.0, max_per_img=n, nms=keep_all)
    else:  # (YOLOX ignores max_per_img: its NMS keeps at most n; CenterNet keeps its top-k)
        cfg.model.test_cfg.update(score_thr=0.0, nms_pre=n, max_per_img=n, conf_thr=-1,
                                  nms=dict(keep_all, max_num=n), topk=n)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    if cfg.model.get('rpn_head', {}).get('type') == 'EmbeddingRPNHead':
        # Sparse R-CNN: its proposals as initialised (whole image), and zero deltas (random
        # ones over six stages invert boxes, which mmcv's RoIAlign refuses; the cost does not
        # depend on them)
        model.rpn_head.init_weights()
        for box_head in model.roi_head.bbox_head:
            torch.nn.init.zeros_(box_head.fc_reg.weight)
            torch.nn.init.zeros_(box_head.fc_reg.bias)
    if 'roi_head' in cfg.model and cfg.model.roi_head.get('type') == 'CascadeRoIHead':
        for box_head in model.roi_head.bbox_head:
            if hasattr(box_head, 'fc_reg_offset'):  # SABL: random offsets invert the RoIs
                torch.nn.init.zeros_(box_head.fc_reg_offset.weight)  # of later stages;
                torch.nn.init.zeros_(box_head.fc_reg_offset.bias)  # zero: bucket centres
    model.cfg = cfg
    return model


def batch(size: int, device: str = 'cpu'):
    import torch
    from mmdet.structures import DetDataSample
    inputs = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 50
    inputs = inputs.to(device)
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                         pad_shape=(size, size), scale_factor=(1.0, 1.0),
                                         batch_input_shape=(size, size),
                                         border=(0, size, 0, size)))  # (CenterNet reads it)
    return inputs, [sample]


def loop_maps(model, inputs, samples, dets) -> None:
    """The slow way: one backward per prediction (score target) through the detector to A,
    then its ODAM map on each tensor of A."""
    import torch

    from odamtrain.explain import build_adapter
    from odamtrain.explain.heatmap import odam_heatmap
    adapter = build_adapter(model)
    y, leaves, rows = adapter.leaf_attribute('score', adapter.forward(inputs, samples), dets)
    rows = rows if isinstance(rows, list) else [rows] * len(leaves)
    for i in range(len(y)):
        grads = torch.autograd.grad(y[i], leaves, retain_graph=True, allow_unused=True)
        for g, a, leaf_rows in zip(grads, leaves, rows):
            row = int(leaf_rows[i])
            if g is not None and a.dim() == 4:
                odam_heatmap(g[row:row + 1], a[row:row + 1].detach())
            elif g is not None:  # DETR's memory: (B, tokens, C)
                odam_heatmap(g[row:row + 1].transpose(1, 2)[..., None],
                             a[row:row + 1].detach().transpose(1, 2)[..., None])


def worker(args):
    """One measurement: prints {seconds: [...], rss_mb, base_rss_mb, n}."""
    import torch
    torch.set_num_threads(args.threads)
    from odamtrain.apis import explain_batch
    cuda = args.device == 'cuda'
    model = build(args.family, args.count).to(args.device)
    inputs, samples = batch(args.size, args.device)
    if args.what == 'loop':  # which predictions to loop over (not timed)
        det, = explain_batch(model, inputs, samples, smooth=None, normalize=None,
                             map_size=50)
        det = det[:LOOP_SAMPLE]

    def measured():
        with torch.no_grad():
            if args.what == 'forward':
                return len(model.predict(inputs, samples)[0].pred_instances)
        if args.what == 'loop':
            loop_maps(model, inputs, samples, det)
            return len(det)
        explained, = explain_batch(model, inputs, samples, mode=args.what)
        return len(explained)

    def run():
        n = measured()
        if cuda:  # the kernels queued by the run are part of its time
            torch.cuda.synchronize()
        return n

    # minutes per run (exact mode, transformers' maps): one timed run, no warm-up
    slow = args.what == 'exact' or (args.what == 'fast' and 'encoder' in model.cfg.model)
    n = None if slow else run()  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(1 if slow else args.repeats):
        t = time.perf_counter()
        n = run()
        times.append(time.perf_counter() - t)
    print(json.dumps(dict(seconds=times, n=n,
                          rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          base_rss_mb=base,
                          gpu_peak_mb=torch.cuda.max_memory_allocated() / 2 ** 20 if cuda
                          else None)))


def accuracy(config: str, checkpoint: str, images: list) -> list:
    """Fast vs exact on a trained dense detector: per FPN level, the cosine between the
    gradients dY/dA and between the ODAM maps (score target, Gaussian Phi) of every
    detection."""
    import torch
    import torch.nn.functional as F

    from odamtrain.apis import init_detector
    from odamtrain.explain import build_adapter
    from odamtrain.explain.conv_towers import paste_windows
    from odamtrain.explain.dense_gradients import (
        EXACT_BELOW_WINDOWS,
        exact_grads,
        window_grads,
        window_radius,
    )
    from odamtrain.explain.heatmap import box_sigma, odam_heatmap
    from odamtrain.inference import prepare_batch
    model = init_detector(config, checkpoint, device='cpu')
    adapter = build_adapter(model)
    stats = {}
    for path in images:
        inputs, samples = prepare_batch(model, path)
        fwd = adapter.forward(inputs, samples)
        det, = adapter.predictions(fwd)
        scale = torch.tensor([samples[0].metainfo['scale_factor']], dtype=torch.float32)
        for level, feat in enumerate(fwd.feats):
            d = det[det.level == level]
            if not len(d):
                continue
            h, w = feat.shape[-2:]
            exact = torch.cat([g for _, g in exact_grads(adapter, fwd, level, d, 'score',
                                                          scale)])
            win, _ = window_grads(adapter, fwd, level, d, 'score', scale)
            ys, xs, _ = adapter.location(level, d.prior, (h, w))
            fast = paste_windows(win, ys, xs, (h, w))
            stride = adapter.level_stride(fwd, level)
            sigma = box_sigma(d.bboxes * scale.repeat(1, 2), stride)
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
        window = (2 * window_radius(adapter, level) + 1) ** 2
        rows.append(dict(level=level, map_hw=list(s['hw']), n=len(g),
                         fast_used=h * w >= EXACT_BELOW_WINDOWS * window,
                         grad_cos_min=float(g.min()), grad_cos_mean=float(g.mean()),
                         map_cos_min=float(m.min()), map_cos_median=float(m.median()),
                         map_cos_mean=float(m.mean())))
    return rows


def measure(family, size, count, what, args):
    cmd = [sys.executable, __file__, '--worker', '--family', family, '--size', str(size),
           '--count', str(count), '--what', what, '--repeats', str(args.repeats),
           '--threads', str(args.threads), '--device', args.device]
    path = os.pathsep.join(p for p in (REPO, os.environ.get('PYTHONPATH')) if p)
    env = dict(os.environ, PYTHONWARNINGS='ignore', PYTHONPATH=path)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-3000:]}')
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res['median_s'] = statistics.median(res['seconds'])
    return res


def print_accuracy(args) -> None:
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


def main():
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    from _common import int_at_least
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--families', nargs='+', default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument('--sizes', nargs='+', type=int_at_least(64), default=[512, 800])
    p.add_argument('--counts', nargs='+', type=int_at_least(1), default=None,
                   help='N per measurement (default 100; DINO 300, all its detections)')
    p.add_argument('--repeats', type=int_at_least(1), default=3)
    p.add_argument('--threads', type=int_at_least(1), default=2)
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--exact', action='store_true', help='also time exact mode (one run)')
    p.add_argument('--out', default=None, help='write all numbers as JSON')
    p.add_argument('--accuracy', nargs=2, metavar=('CONFIG', 'CHECKPOINT'),
                   help='instead: compare fast with exact on this trained detector')
    p.add_argument('--images', nargs='*', default=[], help='images for --accuracy')
    # worker mode
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--family', help=argparse.SUPPRESS)
    p.add_argument('--size', type=int, help=argparse.SUPPRESS)
    p.add_argument('--count', type=int, help=argparse.SUPPRESS)
    p.add_argument('--what', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.accuracy:
        return print_accuracy(args)
    rows = []
    print(f'{"family":14s}{"input":>7s}{"N":>6s}{"forward s":>11s}{"fast maps s":>13s}'
          f'{"fast/fwd":>10s}{"exact maps s":>14s}{"loop s":>10s}{"loop/fast":>11s}'
          f'{"fast MB":>9s}', flush=True)
    for family in args.families:
        for size in args.sizes:
            for count in args.counts or [DEFAULT_N.get(family, 100)]:
                fwd = measure(family, size, count, 'forward', args)
                fast = measure(family, size, count, 'fast', args)
                exact = measure(family, size, count, 'exact', args) if args.exact else None
                loop = measure(family, size, count, 'loop', args)
                n = fast['n']
                loop_s = loop['median_s'] / loop['n'] * n  # timed on LOOP_SAMPLE predictions
                fast_maps = fast['median_s'] - fwd['median_s']  # the maps beyond the forward
                exact_maps = exact['median_s'] - fwd['median_s'] if exact else None
                row = dict(family=family, config=FAMILIES[family], size=size, n=n,
                           forward_s=fwd['median_s'], fast_total_s=fast['median_s'],
                           fast_maps_s=fast_maps, exact_maps_s=exact_maps, loop_s=loop_s,
                           fast_peak_rss_mb=fast['rss_mb'], forward_peak_rss_mb=fwd['rss_mb'],
                           fast_gpu_peak_mb=fast['gpu_peak_mb'],
                           forward_gpu_peak_mb=fwd['gpu_peak_mb'], device=args.device,
                           output_maps_mb=n * size * size * 4 / 2 ** 20)
                rows.append(row)
                if args.out:  # after every row: a long run that stops keeps what it measured
                    from odamtrain.utils import atomic_write_text
                    atomic_write_text(json.dumps(rows, indent=1), args.out)
                print(f'{family:14s}{size:>7d}{n:>6d}{fwd["median_s"]:>11.3f}{fast_maps:>13.3f}'
                      f'{fast_maps / fwd["median_s"]:>10.2f}'
                      f'{(f"{exact_maps:.3f}" if exact else "-"):>14s}{loop_s:>10.2f}'
                      f'{loop_s / max(fast_maps, 1e-9):>11.1f}'
                      f'{fast["gpu_peak_mb"] or fast["rss_mb"]:>9.0f}',
                      flush=True)
    print(f'\nfast maps s = (explain time) - (forward time): the cost of all N maps beyond the '
          f'detection itself, at the input size (min-max normalised). loop s = one backward '
          f'per prediction and its map, timed on {LOOP_SAMPLE} predictions and scaled to N. '
          f'fast MB = peak RSS of the fast run (on a GPU: its peak allocated GPU memory), incl. '
          f'the model and the N output maps.')


if __name__ == '__main__':
    main()
