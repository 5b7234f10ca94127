"""Benchmark the audit's explainers on one trained detector and the same val images, side
by side in one run (CPU):

* D-RISE per image: ``drise_target_maps`` with --masks masks in batches of --batch, against
  the detector's own time on the same masked batches (the forwards alone: D-RISE's
  overhead is mask making, similarity and accumulation; target <= 10 %), and against one
  mask per forward (batch 1; target: batching >= 5x faster);
* VPS per object: forward passes (``vps_forward_count``) and seconds;
* the per-object cost of ODAM, Grad-CAM, D-RISE and VPS on the same objects (the image's
  detections scoring >= --score-thr, at most --objects; each method explains them as
  targets in one call, D-RISE's masks shared by the objects of an image).

    python tools/benchmark_audit.py CONFIG CHECKPOINT [--images 3] [--objects 4]
        [--masks 500] [--batch 32] [--vps-regions 16] [--vps-steps N] [--threads 2]
        [--out results.json]
"""
import argparse
import json
import statistics
import time

import torch
from _common import preprocessed_test_images


def seconds(fn, *args, **kwargs):
    """(seconds of fn(*args, **kwargs), its result)"""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def drise_timing(model, inputs, meta, targets, masks: int, batch: int) -> dict:
    """Seconds per mask of D-RISE batched, of the forwards alone on the same masked
    batches, and of D-RISE with one mask per forward (on masks // 8 masks)."""
    from odamtrain.apis import pixel_to_input, predict_fn
    from odamtrain.explain.drise import drise_grids, drise_masks, drise_target_maps
    boxes, labels = targets.bboxes, targets.labels
    t_batched, _ = seconds(drise_target_maps, model, inputs, meta, boxes, labels,
                           num_masks=masks, batch_size=batch)
    # the detector alone on the same masked images (masks made outside the clock)
    h, w = inputs.shape[-2:]
    cells, shifts = drise_grids(masks, 16, 0.5, (h, w), torch.Generator().manual_seed(0))
    fill = pixel_to_input(model, inputs.new_zeros(3)).reshape(-1, 1, 1)
    predict = predict_fn(model, meta)
    t_forward = 0.0
    for s in range(0, masks, batch):
        m = drise_masks(cells[s:s + batch], shifts[s:s + batch], (h, w))[:, None]
        masked = inputs * m + fill * (1 - m)
        t, _ = seconds(predict, masked)
        t_forward += t
    single = max(1, masks // 8)
    t_single, _ = seconds(drise_target_maps, model, inputs, meta, boxes, labels,
                          num_masks=single, batch_size=1)
    return dict(batched=t_batched / masks, forwards=t_forward / masks,
                one_per_forward=t_single / single)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--images', type=int, default=3)
    p.add_argument('--objects', type=int, default=4, help='objects per image, at most')
    p.add_argument('--score-thr', type=float, default=0.3)
    p.add_argument('--masks', type=int, default=500)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--vps-regions', type=int, default=16)
    p.add_argument('--vps-steps', type=int, default=None)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', help='write the figures as JSON')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from odamtrain.apis import explain_batch, init_detector
    from odamtrain.explain import vps_forward_count
    model = init_detector(args.config, args.checkpoint)
    batches = preprocessed_test_images(model, args.images)
    settings = dict(drise=dict(num_masks=args.masks, batch_size=args.batch),
                    vps=dict(regions=args.vps_regions, max_steps=args.vps_steps,
                             batch_size=args.batch))
    methods = ('odam', 'gradcam', 'drise', 'vps')
    per_object = {m: [] for m in methods}
    drise = {k: [] for k in ('batched', 'forwards', 'one_per_forward')}
    objects = 0
    with torch.no_grad():
        explain_batch(model, batches[0]['inputs'], batches[0]['data_samples'])  # warm-up
        for b in batches:
            inputs, samples = b['inputs'], b['data_samples']
            det = model.predict(inputs, samples)[0].pred_instances
            targets = det[det.scores >= args.score_thr][:args.objects]
            if len(targets) == 0:
                continue
            objects += len(targets)
            for m in methods:  # the same objects, one call per method
                t, _ = seconds(explain_batch, model, inputs, samples, method=m,
                               targets=[targets], **settings)
                per_object[m].append(t / len(targets))
            for k, v in drise_timing(model, inputs, samples[0].metainfo, targets,
                                     args.masks, args.batch).items():
                drise[k].append(v)
    if not objects:
        raise SystemExit(f'no detection scores >= {args.score_thr} on {args.images} images')
    mean = {m: statistics.mean(v) for m, v in per_object.items()}
    d = {k: statistics.mean(v) for k, v in drise.items()}
    forwards = vps_forward_count(args.vps_regions, args.vps_steps)
    print(f'{len(batches)} images, {objects} objects; {args.config}')
    print(f'{"method":10s}{"s/object":>10s}{"x ODAM":>9s}   budget')
    budgets = dict(odam='one batched backward per image', gradcam='same gradients as ODAM',
                   drise=f'{args.masks} masks in batches of {args.batch}, shared per image',
                   vps=f'{args.vps_regions} regions, {forwards} forwards per object')
    for m in methods:
        print(f'{m:10s}{mean[m]:>10.3f}{mean[m] / mean["odam"]:>9.1f}   {budgets[m]}')
    print(f'D-RISE ms/mask: batched {d["batched"] * 1e3:.2f}, forwards alone '
          f'{d["forwards"] * 1e3:.2f} (overhead {d["batched"] / d["forwards"] - 1:+.1%}), '
          f'one mask per forward {d["one_per_forward"] * 1e3:.2f} '
          f'(batching {d["one_per_forward"] / d["batched"]:.1f}x faster)')
    print(f'VPS: {forwards} forwards per object, {mean["vps"] / forwards * 1e3:.2f} ms each')
    if args.out:
        from odamtrain.utils import atomic_write_text
        atomic_write_text(json.dumps(dict(
            config=args.config, images=len(batches), objects=objects, settings=vars(args),
            seconds_per_object=mean, drise_seconds_per_mask=d, vps_forwards=forwards),
            indent=1), args.out)


if __name__ == '__main__':
    main()
