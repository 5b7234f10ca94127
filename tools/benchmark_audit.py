"""Benchmark the audit's explainers on one trained detector and the same val images, side
by side in one run (CPU). Sections (``--sections``, default all):

* ``timing``: D-RISE per image (``drise_target_maps`` with --masks masks in batches of
  --batch) against the detector's own time on the same masked batches (D-RISE's overhead:
  mask making, similarity, accumulation; target <= 10 %) and against one mask per forward
  (target: batching >= 5x faster); the per-object cost of ODAM, Grad-CAM, D-RISE and VPS on
  the same objects (each method explains them as targets in one call);
* ``stability``: D-RISE split-half self-agreement against the number of masks N: the
  Pearson correlation of the maps of two disjoint halves of N masks (N / 2 each), mean over
  the objects, for odamtrain's three estimators (the same forwards) and for xaitk-saliency
  (its RISEGrid masks and DRISEScoring, on the same detector and masking rule), on the
  trained detector and on a toy detector (one fixed box whose score is a sigmoid of the
  visible part of a window);
* ``vps``: VPS windowed (--vps-windowed HEAD:WINDOW[:BOX_SLOTS] ...) against the full
  greedy search on the same objects and SLICO regions: forwards, and the insertion /
  deletion AUC of their maps (the VPS protocol: whole image, evidence IoU x score,
  --vps-curve-steps steps); targets >= 95 % of greedy's insertion AUC, deletion AUC <=
  greedy's / 0.95, with <= 25 % of its forwards.

    python tools/benchmark_audit.py CONFIG CHECKPOINT [--sections timing stability vps]
        [--images 3] [--objects 4] [--masks 500] [--batch 32] [--stability-masks 250 500
        1000 2000] [--vps-regions 64] [--vps-windowed 8:0 6:2] [--vps-images 3]
        [--threads 2] [--out results.json]
"""
import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
from _common import preprocessed_test_images

from odamtrain.apis import explain_batch, init_detector, pixel_to_input, predict_fn
from odamtrain.evaluation.functional import (
    deletion_auc,
    deletion_insertion,
    insertion_auc,
    match_detections,
)
from odamtrain.explain import DriseSettings, VpsSettings, vps_forward_count
from odamtrain.explain.drise import (
    ESTIMATORS,
    drise_accumulate,
    drise_estimate,
    drise_grids,
    drise_masks,
    drise_target_maps,
)
from odamtrain.explain.vps import slico_regions, vps_saliency
from odamtrain.inference import input_to_rgb
from odamtrain.utils import atomic_write_text

SECTIONS = ('timing', 'stability', 'vps')


def seconds(fn, *args, **kwargs):
    """(seconds of fn(*args, **kwargs), its result)"""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


# ------------------------------------------------------------------------------ timing
def drise_timing(model, inputs, meta, targets, masks: int, batch: int) -> dict:
    """Seconds per mask of D-RISE batched, of the forwards alone on the same masked
    batches, and of D-RISE with one mask per forward (on masks // 8 masks)."""
    boxes, labels = targets.bboxes, targets.labels
    t_batched, _ = seconds(drise_target_maps, model, inputs, meta, boxes, labels,
                           settings=DriseSettings(num_masks=masks, batch_size=batch))
    h, w = meta['img_shape'][:2]
    cells, shifts = drise_grids(masks, 16, 0.5, (h, w), torch.Generator().manual_seed(0))
    fill = pixel_to_input(model, inputs.new_zeros(3)).reshape(-1, 1, 1)
    predict = predict_fn(model, meta)
    t_forward = 0.0
    for s in range(0, masks, batch):  # masks made outside the clock
        m = drise_masks(cells[s:s + batch], shifts[s:s + batch], (h, w))[:, None]
        masked = inputs.repeat(len(m), 1, 1, 1)
        masked[..., :h, :w] = inputs[..., :h, :w] * m + fill * (1 - m)
        t, _ = seconds(predict, masked)
        t_forward += t
    single = max(1, masks // 8)
    t_single, _ = seconds(drise_target_maps, model, inputs, meta, boxes, labels,
                          settings=DriseSettings(num_masks=single, batch_size=1))
    return dict(batched=t_batched / masks, forwards=t_forward / masks,
                one_per_forward=t_single / single)


def timing(model, objects, args) -> dict:
    settings = dict(drise=dict(num_masks=args.masks, batch_size=args.batch),
                    vps=dict(regions=args.vps_regions, batch_size=args.batch))
    methods = ('odam', 'gradcam', 'drise', 'vps')
    per_object = {m: [] for m in methods}
    drise = {k: [] for k in ('batched', 'forwards', 'one_per_forward')}
    for inputs, samples, targets in objects:
        for m in methods:  # the same objects, one call per method
            t, _ = seconds(explain_batch, model, inputs, samples, method=m,
                           targets=[targets], **settings)
            per_object[m].append(t / len(targets))
        for k, v in drise_timing(model, inputs, samples[0].metainfo, targets, args.masks,
                                 args.batch).items():
            drise[k].append(v)
    mean = {m: statistics.mean(v) for m, v in per_object.items()}
    d = {k: statistics.mean(v) for k, v in drise.items()}
    forwards = vps_forward_count(VpsSettings(regions=args.vps_regions))  # default search
    print(f'{"method":10s}{"s/object":>10s}{"x ODAM":>9s}')
    for m in methods:
        print(f'{m:10s}{mean[m]:>10.3f}{mean[m] / mean["odam"]:>9.1f}')
    print(f'D-RISE ms/mask: batched {d["batched"] * 1e3:.2f}, forwards alone '
          f'{d["forwards"] * 1e3:.2f} (overhead {d["batched"] / d["forwards"] - 1:+.1%}), '
          f'one mask per forward {d["one_per_forward"] * 1e3:.2f} '
          f'(batching {d["one_per_forward"] / d["batched"]:.1f}x faster)')
    print(f'VPS ({args.vps_regions} SLICO regions, windowed): {forwards} forwards per object, '
          f'{mean["vps"] / forwards * 1e3:.2f} ms each')
    return dict(seconds_per_object=mean, drise_seconds_per_mask=d, vps_forwards=forwards)


# --------------------------------------------------------------------------- stability
def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps (NaN if one is constant)."""
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else math.nan


def masked_predict(predict, inputs, masks, fill, batch):
    """Detections of the image with each of ``masks`` (n, h, w) applied to its top-left."""
    h, w = masks.shape[-2:]
    out = []
    for s in range(0, len(masks), batch):
        m = masks[s:s + batch, None].to(inputs)
        images = inputs.repeat(len(m), 1, 1, 1)
        images[..., :h, :w] = fill + (inputs[..., :h, :w] - fill) * m
        out += predict(images)
    return out


def xaitk_drise(predict, inputs, boxes, labels, num_classes, n, seed, fill, batch, hw):
    """xaitk-saliency's D-RISE maps (T, h, w) from ``n`` RISEGrid masks (16 x 16 cells,
    p 0.5, its seed) through the same detector and masking rule."""
    from xaitk_saliency.impls.gen_detector_prop_sal.drise_scoring import DRISEScoring
    from xaitk_saliency.impls.perturb_image.rise import RISEGrid
    masks = RISEGrid(n=n, s=16, p1=0.5, seed=seed, threads=0).perturb(
        np.zeros((*hw, 3), np.uint8))
    dets = masked_predict(predict, inputs, torch.from_numpy(masks), fill, batch)
    props = max(1, max(len(d[0]) for d in dets))
    perturbed = np.zeros((n, props, 5 + num_classes))
    perturbed[:, :, 5] = 1.0  # padding rows: class 0, objectness 0 (similarity 0)
    for i, (b, lab, sc) in enumerate(dets):
        k = len(b)
        perturbed[i, :k, :4] = b.cpu().numpy()
        perturbed[i, :k, 4] = sc.cpu().numpy()
        perturbed[i, :k, 5:] = np.eye(num_classes)[lab.cpu().numpy()]
    ref = np.concatenate([boxes.cpu().numpy(), np.ones((len(boxes), 1)),
                          np.eye(num_classes)[labels.cpu().numpy()]], 1)
    return torch.from_numpy(DRISEScoring().generate(ref, perturbed, masks))


def agreement_curves(predict, inputs, boxes, labels, hw, fill, sizes, num_classes, batch,
                     seed=0) -> dict:
    """{estimator or 'xaitk': {N: [split-half Pearson per target]}} for one image."""
    out = {name: {} for name in (*ESTIMATORS, 'xaitk')}
    for n in sizes:
        half = n // 2
        cells, shifts = drise_grids(2 * half, 16, 0.5, hw, torch.Generator().manual_seed(seed))
        parts = [drise_accumulate(predict, inputs, boxes, labels, cells[sl], shifts[sl], hw,
                                  fill, batch) for sl in (slice(0, half), slice(half, None))]
        for est in ESTIMATORS:
            a, b = (drise_estimate(sums, est) for sums in parts)
            out[est][n] = [pearson(x, y) for x, y in zip(a, b)]
        a, b = (xaitk_drise(predict, inputs, boxes, labels, num_classes, half, seed + k, fill,
                            batch, hw) for k in (1, 2))
        out['xaitk'][n] = [pearson(x, y) for x, y in zip(a, b)]
    return out


def toy_detector(hw, window):
    """One fixed box (the window) whose score is sigmoid(12 (visible part of the window's
    mean intensity - 0.5)): a black box whose true saliency is the window."""
    (y1, y2), (x1, x2) = window
    box = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32)

    def predict(images):
        return [(box, torch.tensor([0]),
                 torch.sigmoid(12 * (img[:, y1:y2, x1:x2].mean() - 0.5)).reshape(1))
                for img in images]
    return predict, box


def stability(model, objects, args) -> dict:
    results = {}
    for name in ('detector', 'toy'):
        per = {est: {n: [] for n in args.stability_masks} for est in (*ESTIMATORS, 'xaitk')}
        for inputs, samples, targets in objects:
            meta = samples[0].metainfo
            hw = tuple(meta['img_shape'][:2])
            if name == 'detector':
                predict, boxes, labels = predict_fn(model, meta), targets.bboxes, targets.labels
                fill = pixel_to_input(model, inputs.new_zeros(3)).reshape(-1, 1, 1)
                num_classes = model.bbox_head.num_classes if hasattr(model, 'bbox_head') \
                    else 1
            else:  # one toy per image: white image, a window a quarter of its size
                window = ((hw[0] // 4, hw[0] // 2), (hw[1] // 3, hw[1] // 3 + hw[1] // 4))
                predict, boxes = toy_detector(hw, window)
                labels, fill, num_classes = torch.tensor([0]), torch.zeros(3, 1, 1), 1
                inputs = torch.ones_like(inputs)
                boxes = boxes.to(inputs)
            curves = agreement_curves(predict, inputs, boxes, labels, hw, fill,
                                      args.stability_masks, num_classes, args.batch)
            for est, by_n in curves.items():
                for n, values in by_n.items():
                    per[est][n] += values
        table = {est: {n: float(np.nanmean(v)) for n, v in by_n.items()}
                 for est, by_n in per.items()}
        results[name] = table
        print(f'D-RISE split-half self-agreement ({name}; Pearson of two halves of N masks, '
              f'mean over {len(next(iter(per["mean"].values())))} objects)')
        print(f'{"N":>6s}' + ''.join(f'{e:>10s}' for e in table))
        for n in args.stability_masks:
            print(f'{n:>6d}' + ''.join(f'{table[e][n]:>10.3f}' for e in table), flush=True)
    return results


# --------------------------------------------------------------------------------- vps
def vps_budget(model, args) -> dict:
    """Windowed vs greedy VPS on the detected val objects (IoU > 0.5 with a GT box)."""
    from _common import test_loader
    rows = {'greedy': dict(insertion=[], deletion=[], forwards=[], seconds=[])} \
        if args.vps_greedy else {}
    rows.update({f'windowed {spec}': dict(insertion=[], deletion=[], forwards=[], seconds=[])
                 for spec in args.vps_windowed})
    images = 0
    for data in test_loader(model):
        if images == args.vps_images:
            break
        batch = model.data_preprocessor(data, False)
        inputs, samples = batch['inputs'], batch['data_samples']
        meta = samples[0].metainfo
        gt = samples[0].gt_instances
        with torch.no_grad():
            det = model.predict(inputs, [s.clone() for s in samples])[0].pred_instances
        det = det[det.scores >= args.score_thr]
        di, _ = match_detections(det.bboxes, det.scores, gt.bboxes.to(det.bboxes), 0.5)
        if not len(di):
            continue
        images += 1
        h, w = meta['img_shape'][:2]
        cells = slico_regions(input_to_rgb(model, inputs[0, :, :h, :w]), args.vps_regions)
        regions = torch.zeros(len(cells), *inputs.shape[-2:], dtype=torch.bool)
        regions[:, :h, :w] = cells
        baseline = inputs[0].clone()
        baseline[:, :h, :w] = pixel_to_input(model, inputs.new_zeros(3, h, w))
        predict = predict_fn(model, meta)
        for k in di[:args.objects].tolist():
            label = int(det.labels[k])
            for name, row in rows.items():
                search, head, window, slots = ('greedy', 1, 0, 0) if name == 'greedy' else \
                    ('windowed', *map(int, (name.split()[1] + ':0').split(':')[:3]))
                settings = VpsSettings(search=search, head=head, window=window,
                                       box_slots=slots, batch_size=args.batch)
                t, (sal, _, _, forwards) = seconds(
                    vps_saliency, predict, inputs, det.bboxes[k], label, regions, baseline,
                    settings, meta['scale_factor'][:2])
                curves = deletion_insertion(predict, inputs[0], sal, det.bboxes[k], label,
                                            h * w, baseline, baseline, args.vps_curve_steps,
                                            'vps', args.batch)
                row['insertion'].append(insertion_auc(curves['insertion']))
                row['deletion'].append(deletion_auc(curves['deletion']))
                row['forwards'].append(forwards)
                row['seconds'].append(t)
    if not images:
        raise SystemExit('vps: no detected object on the val images')
    first = next(iter(rows.values()))
    greedy = {k: statistics.mean(v) for k, v in rows.get('greedy', first).items()}
    table = {}
    print(f'VPS search on {len(first["forwards"])} detected val objects, '
          f'{args.vps_regions} SLICO regions (about), {args.vps_curve_steps}-step curves')
    print(f'{"search":16s}{"insertion":>10s}{"deletion":>10s}{"ins/greedy":>11s}'
          f'{"greedy/del":>11s}{"forwards":>10s}{"/greedy":>9s}{"s/object":>10s}')
    for name, row in rows.items():
        mean = {k: statistics.mean(v) for k, v in row.items()}
        mean.update(insertion_ratio=mean['insertion'] / greedy['insertion'],
                    deletion_ratio=greedy['deletion'] / mean['deletion'],
                    forward_ratio=mean['forwards'] / greedy['forwards'],
                    objects=len(row['forwards']))
        table[name] = mean
        print(f'{name:16s}{mean["insertion"]:>10.4f}{mean["deletion"]:>10.4f}'
              f'{mean["insertion_ratio"]:>11.3f}{mean["deletion_ratio"]:>11.3f}'
              f'{mean["forwards"]:>10.0f}{mean["forward_ratio"]:>9.3f}{mean["seconds"]:>10.2f}')
    return table


# -------------------------------------------------------------------------------- main
def detected_objects(model, batches, args) -> list:
    """(inputs, samples, targets) per image with detections scoring >= --score-thr (at most
    --objects each)."""
    out = []
    for b in batches:
        inputs, samples = b['inputs'], b['data_samples']
        with torch.no_grad():
            det = model.predict(inputs, [s.clone() for s in samples])[0].pred_instances
        targets = det[det.scores >= args.score_thr][:args.objects]
        if len(targets):
            out.append((inputs, samples, targets))
    if not out:
        raise SystemExit(f'no detection scores >= {args.score_thr} on {args.images} images')
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--sections', nargs='+', default=list(SECTIONS), choices=SECTIONS)
    p.add_argument('--images', type=int, default=3)
    p.add_argument('--objects', type=int, default=4, help='objects per image, at most')
    p.add_argument('--score-thr', type=float, default=0.3)
    p.add_argument('--masks', type=int, default=500)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--stability-masks', type=int, nargs='+', default=[250, 500, 1000, 2000])
    p.add_argument('--vps-regions', type=int, default=64)
    p.add_argument('--vps-windowed', nargs='+', default=['1:4', '1:6', '8:0'],
                   help='windowed searches as HEAD:WINDOW[:BOX_SLOTS]')
    p.add_argument('--vps-images', type=int, default=3)
    p.add_argument('--no-vps-greedy', dest='vps_greedy', action='store_false',
                   help='leave the full greedy search out (ratios then vs the first window)')
    p.add_argument('--vps-curve-steps', type=int, default=32)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', help='write the figures as JSON')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = init_detector(args.config, args.checkpoint, device='cpu')
    out = dict(config=args.config, checkpoint=args.checkpoint, settings=vars(args))
    objects = detected_objects(model, preprocessed_test_images(model, args.images), args)
    print(f'{len(objects)} images, {sum(len(o[2]) for o in objects)} objects; {args.config}')
    with torch.no_grad():
        if 'timing' in args.sections:
            explain_batch(model, objects[0][0], objects[0][1])  # warm-up
            out['timing'] = timing(model, objects, args)
        if 'stability' in args.sections:
            out['stability'] = stability(model, objects, args)
        if 'vps' in args.sections:
            out['vps'] = vps_budget(model, args)
    if args.out:
        atomic_write_text(json.dumps(out, indent=1), args.out)


if __name__ == '__main__':
    main()
