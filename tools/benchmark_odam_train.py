"""Benchmark Odam-Train: one training step (forward, losses, backward, SGD step) with and
without the ODAM losses, detached and second-order, for FCOS and Faster R-CNN, on the same
synthetic crowd batch and the same starting weights, in one run.

The variants are timed round-robin (one step each per round) so that machine noise hits
them alike; the figure is the median step time and its ratio to Odam-Train off.

    python tools/benchmark_odam_train.py [--models fcos-tiny faster-rcnn-tiny fcos-r50
        faster-rcnn-r50] [--batch 2] [--r50-scale 512] [--rounds 6] [--threads 2]
        [--out docs/benchmark_odam_train.json]
"""
import argparse
import copy
import json
import os.path as osp
import statistics
import sys
import time

import numpy as np
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

MODELS = {  # name -> config
    'fcos-tiny': 'configs/fcos_tiny_fpn_synthetic.py',
    'faster-rcnn-tiny': 'configs/faster-rcnn_tiny_fpn_synthetic.py',
    'fcos-r50': 'configs/fcos_r50_fpn_crowdhuman.py',
    'faster-rcnn-r50': 'configs/faster-rcnn_r50_fpn_crowdhuman.py',
}
VARIANTS = {'off': None, 'detached': dict(second_order=False),
            'second_order': dict(second_order=True)}


def build(name: str, odam_loss, r50_scale: int):
    from mmdet.registry import MODELS as REGISTRY
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from odamtrain.models import install_odam
    register_all_modules()
    cfg = Config.fromfile(osp.join(REPO, MODELS[name]))
    cfg.model.backbone.init_cfg = None  # random weights: speed does not depend on them
    if name.endswith('r50'):
        for t in cfg.test_pipeline:
            if t['type'] == 'Resize':
                t['scale'] = (r50_scale * 7 // 4, r50_scale)
        cfg.test_dataloader.dataset.pipeline = cfg.test_pipeline
    cfg.model.setdefault('train_cfg', {})
    cfg.model.train_cfg = dict(cfg.model.train_cfg or {}, odam_loss=odam_loss)
    torch.manual_seed(0)
    model = REGISTRY.build(cfg.model)
    model.init_weights()
    model.cfg = cfg
    return install_odam(model).train()


def synthetic_batch(model, batch_size: int):
    from odamtrain.datasets import render_scene
    from odamtrain.inference import prepare_train_batch
    imgs, boxes = [], []
    for seed in range(batch_size):
        img, gtboxes = render_scene(np.random.default_rng([seed, 7]))
        imgs.append(img)
        boxes.append(np.array([[x, y, x + w, y + h] for x, y, w, h in
                               (g['fbox'] for g in gtboxes)], np.float32))
    return prepare_train_batch(model, imgs, boxes)


def step(model, optimizer, inputs, samples) -> float:
    t = time.perf_counter()
    optimizer.zero_grad()
    loss, _ = model.parse_losses(model.loss(inputs, samples))
    loss.backward()
    optimizer.step()
    return time.perf_counter() - t


def bench(name: str, args) -> dict:
    models = {v: build(name, cfg, args.r50_scale) for v, cfg in VARIANTS.items()}
    state = copy.deepcopy(models['off'].state_dict())
    for m in models.values():
        m.load_state_dict(state)
    inputs, samples = synthetic_batch(models['off'], args.batch)
    opts = {v: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9)
            for v, m in models.items()}
    times = {v: [] for v in models}
    for r in range(args.rounds + 1):  # round 0 warms up
        for v, m in models.items():
            t = step(m, opts[v], inputs, samples)
            if r:
                times[v].append(t)
    med = {v: statistics.median(t) for v, t in times.items()}
    return dict(model=name, batch=args.batch, input_shape=list(inputs.shape[-2:]),
                num_gt=[len(s.gt_instances) for s in samples],
                step_s={v: round(t, 4) for v, t in med.items()},
                ratio={v: round(med[v] / med['off'], 3) for v in med})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--r50-scale', type=int, default=512, help='R50 short edge')
    parser.add_argument('--rounds', type=int, default=6)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = 'cpu'
    rows = []
    print(f'{"model":18s} {"input":>10s} {"off s":>8s} {"detached":>14s} {"second-order":>14s}')
    for name in args.models:
        row = bench(name, args)
        rows.append(row)
        s, r = row['step_s'], row['ratio']
        print(f'{name:18s} {"x".join(map(str, row["input_shape"])):>10s} {s["off"]:8.3f} '
              f'{s["detached"]:8.3f} {r["detached"]:4.2f}x {s["second_order"]:8.3f} '
              f'{r["second_order"]:4.2f}x', flush=True)
    if args.out:
        from odamtrain.utils.fileio import atomic_write_text
        atomic_write_text(json.dumps(dict(
            device=device, threads=args.threads, torch=torch.__version__, rounds=args.rounds,
            results=rows), indent=1), args.out)


if __name__ == '__main__':
    main()
