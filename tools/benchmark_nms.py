"""Benchmark Odam-NMS against mmcv's nms on CPU, side by side in one run:

* the operator alone for 100 / 1000 / 5000 candidates (random boxes; heat maps 50 x 67, the
  size Odam-NMS correlates at), median of --repeats;
* with ``--pipeline CONFIG CHECKPOINT``: the whole test-time prediction (``model.predict``
  on preprocessed images: backbone, head, candidates, maps, suppression) with NMS and with
  Odam-NMS (maps in 'fast' and in 'windows' mode), interleaved image by image on the same
  --images val images, seconds per image and ratio to NMS.

    python tools/benchmark_nms.py [--counts 100 1000 5000] [--repeats 5] [--threads 2]
        [--pipeline CONFIG CHECKPOINT --images 20]
"""
import argparse
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
    iou = 0.5
    variants = {'NMS': dict(type='nms', iou_threshold=iou)}
    for mode in ('fast', 'windows')[:1 if two_stage else 2]:
        variants[f'Odam-NMS {mode}'] = dict(type='odam_nms', iou_threshold=iou, corr_low=0.2,
                                            corr_high=0.8, mode=mode)
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


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--counts', nargs='+', type=int, default=[100, 1000, 5000])
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--pipeline', nargs=2, metavar=('CONFIG', 'CHECKPOINT'))
    p.add_argument('--images', type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
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
