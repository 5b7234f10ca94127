"""ODAM gradients and maps of a two-stage detector's predictions (A: see
:mod:`odamtrain.explain.adapters.roi`).

Shapes: R RoIs, n predictions, C channels, (s, s) the RoI feature size, (H, W) a map.

* RoI features (``features='roi'``): one backward of ``sum_p Y_p`` per round of predictions
  on distinct RoIs gives each its gradient on its own RoI's features, in every stage; each
  stage's (s, s) map is pasted into the RoI that stage pooled, and the stages' maps add up
  (with the reads an adapter makes at a prediction's own box: MS R-CNN's mask features).
  Phi's sigma is 0.125 * s cells (the RoI spans the map).
* FPN level (``features='fpn'``, one stage): dY/d(the RoI's FPN level) through RoIAlign's
  backward; predictions whose RoI footprints on their level do not overlap share a
  backward (:func:`fpn_rounds`); Phi's sigma by the box as for dense heads.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from mmengine.structures import InstanceData

from odamtrain.inference import image_window

from .heatmap import (
    SIGMA_PER_BOX_SIZE,
    box_sigma,
    explanation_maps,
    odam_heatmap,
    output_size,
    paste_roi_maps,
    resize_maps,
)
from .protocol import scales
from .settings import ExplanationSettings

__all__ = ['RoIReadGrads', 'roi_grads', 'roi_heatmaps', 'fpn_rounds', 'roi_footprints',
           'roi_fpn_grads',
           'fpn_heatmaps', 'roi_positive_maps']


def _rounds_of_distinct_rois(roi: torch.Tensor) -> torch.Tensor:
    """(n,) round of each prediction = how many earlier predictions share its RoI."""
    order = torch.argsort(roi, stable=True)
    sorted_roi = roi[order]
    first = torch.searchsorted(sorted_roi, sorted_roi)
    rounds = torch.empty_like(order)
    rounds[order] = torch.arange(len(roi), device=roi.device) - first
    return rounds


class RoIReadGrads(NamedTuple):
    """One read of the features A by the predictions, per prediction: ``grads`` and
    ``feats`` (n, C, s, s), ``rois`` (n, 5) (batch index, x1y1x2y2 input pixels) where it
    was read."""
    grads: torch.Tensor
    feats: torch.Tensor
    rois: torch.Tensor


def roi_grads(adapter, fwd, preds: InstanceData, target: str) -> list:
    """dY_p / dA for every read of A (:class:`RoIReadGrads` each): the RoI reads of the
    forward (every stage, ``preds.roi`` selects the row), then the reads the adapter makes
    at each prediction's own box (:meth:`prediction_reads`, MS R-CNN's mask features); one
    backward per round of predictions on distinct RoIs."""
    extra = adapter.prediction_reads(fwd, preds, target) if len(preds) else []
    leaves = list(fwd.roi_feats) + [feats for feats, _ in extra]
    grads = [f.new_zeros(len(preds), *f.shape[1:]) for f in leaves]
    if len(preds):
        rounds = _rounds_of_distinct_rois(preds.roi)
        with torch.enable_grad():  # (the sums below are part of the graph)
            y = adapter.attribute(target, fwd, preds)  # [n]
            sums = [y[rounds == r].sum() for r in range(int(rounds.max()) + 1)]
        on_roi = len(fwd.roi_feats)
        for r, total in enumerate(sums):
            sel = (rounds == r).nonzero()[:, 0]
            gs = torch.autograd.grad(total, leaves, retain_graph=True, allow_unused=True)
            for k, g in enumerate(gs):
                if g is not None:
                    grads[k][sel] = g[preds.roi[sel]] if k < on_roi else g[sel]
    reads = [RoIReadGrads(g, f.detach()[preds.roi], rois[preds.roi])
             for g, f, rois in zip(grads, fwd.roi_feats, fwd.rois)]
    return reads + [RoIReadGrads(g, f.detach(), rois)
                    for g, (f, rois) in zip(grads[len(fwd.roi_feats):], extra)]


def roi_heatmaps(adapter, fwd, dets: list, settings: ExplanationSettings) -> None:
    """Set ``heatmaps`` (N, H, W) at the settings' ``map_size`` on each image's predictions
    (``roi``, ``labels``, ``img``): each read's map pasted into the box it was read from,
    summed."""
    method, target, smooth = settings.method, settings.target, settings.smooth
    metas = fwd.metas
    preds = InstanceData.cat(dets) if dets else InstanceData()
    reads = roi_grads(adapter, fwd, preds, target)
    scale = scales(metas, fwd.roi_feats[0])
    with torch.no_grad():
        read_maps = []
        for read in reads:
            sigma = None
            if method == 'odam' and smooth == 'gaussian':
                sigma = read.grads.new_full((len(read.grads),),
                                            SIGMA_PER_BOX_SIZE * read.feats.shape[-1])
            read_maps.append(explanation_maps(method, read.grads, read.feats, sigma))
        start = 0
        for i, (det, meta) in enumerate(zip(dets, metas)):
            out_hw = output_size(meta['ori_shape'][:2], settings.map_size)
            ori_h, ori_w = meta['ori_shape'][:2]
            # a RoI in input pixels -> original pixels -> the output map's pixels
            to_out = scale[i].new_tensor([out_hw[1] / ori_w, out_hw[0] / ori_h]) / scale[i]
            (top, left), _ = image_window(meta)
            origin = scale[i].new_tensor([left, top]).repeat(2)
            det.heatmaps = fwd.roi_feats[0].new_zeros(len(det), *out_hw)
            for read, maps in zip(reads, read_maps):
                rows = slice(start, start + len(det))
                det.heatmaps += paste_roi_maps(maps[rows],
                                               (read.rois[rows, 1:] - origin) * to_out.repeat(2),
                                               out_hw)
            start += len(det)


def fpn_rounds(level: torch.Tensor, cells: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """Greedy colouring: predictions in one round have disjoint footprints on their level
    (cells (N, 4) x1y1x2y2 inclusive, per ``level``) and distinct RoIs, so one backward
    separates their gradients. Returns (N,) round index."""
    rounds = torch.full_like(level, -1)
    members: list[list[int]] = []
    for i in range(len(level)):
        for r, idx in enumerate(members):
            j = torch.tensor(idx)
            same = level[j] == level[i]
            overlap = ((cells[j, 0] <= cells[i, 2]) & (cells[i, 0] <= cells[j, 2])
                       & (cells[j, 1] <= cells[i, 3]) & (cells[i, 1] <= cells[j, 3]) & same)
            if not overlap.any() and not (roi[j] == roi[i]).any():
                idx.append(i)
                rounds[i] = r
                break
        else:
            members.append([i])
            rounds[i] = len(members) - 1
    return rounds


def roi_footprints(extractor, rois: torch.Tensor, num_levels: int):
    """Where RoIAlign reads each RoI: its FPN level (R,) and the cells it touches on that
    level (R, 4) x1y1x2y2 inclusive (the box in cells, widened by one for bilinear taps)."""
    level = extractor.map_roi_levels(rois, num_levels)  # [R]
    strides = torch.tensor(extractor.featmap_strides, dtype=rois.dtype,
                           device=rois.device)[level]
    box = rois[:, 1:] / strides[:, None]
    return level, torch.cat([box[:, :2].floor() - 1, box[:, 2:].ceil() + 1], 1)


def roi_fpn_grads(adapter, fwd, preds: InstanceData, target: str):
    """Yield (indices, level, grads (n, C, h, w)): dY_p/d(FPN level of p's RoI) through
    RoIAlign's backward, one backward per round of :func:`fpn_rounds`."""
    levels = fwd.levels[:adapter.extractor.num_inputs]
    roi_level, cells = roi_footprints(adapter.extractor, fwd.rois[0][preds.roi], len(levels))
    rounds = fpn_rounds(roi_level, cells, preds.roi)
    with torch.enable_grad():
        y = adapter.attribute(target, fwd, preds)
        sums = [y[rounds == r].sum() for r in range(int(rounds.max()) + 1 if len(rounds) else 0)]
    for r, total in enumerate(sums):
        sel = (rounds == r).nonzero()[:, 0]
        grads = torch.autograd.grad(total, levels, retain_graph=True, allow_unused=True)
        for lvl in roi_level[sel].unique().tolist():
            part = sel[roi_level[sel] == lvl]
            g = grads[lvl][preds.img[part]]  # [n, C, h, w]
            h, w = g.shape[-2:]
            ys = torch.arange(h, dtype=cells.dtype, device=cells.device)[None, :, None]
            xs = torch.arange(w, dtype=cells.dtype, device=cells.device)[None, None, :]
            c = cells[part]
            inside = ((ys >= c[:, 1, None, None]) & (ys <= c[:, 3, None, None])
                      & (xs >= c[:, 0, None, None]) & (xs <= c[:, 2, None, None]))
            yield part, lvl, g * inside[:, None].to(g.dtype)


def fpn_heatmaps(adapter, fwd, dets: list, settings: ExplanationSettings) -> None:
    """Set ``heatmaps`` (N, H, W) at the settings' ``map_size`` on each image's predictions
    from the RoIs' FPN levels."""
    method, target, smooth = settings.method, settings.target, settings.smooth
    metas = fwd.metas
    scale = scales(metas, fwd.levels[0])
    strides = adapter.extractor.featmap_strides
    preds = InstanceData.cat(dets) if dets else InstanceData()
    offsets = torch.cumsum(torch.tensor([0] + [len(d) for d in dets]), 0)
    for det, meta in zip(dets, metas):
        det.heatmaps = fwd.levels[0].new_zeros(len(det), *output_size(meta['ori_shape'][:2],
                                                                      settings.map_size))
    if len(preds) == 0:
        return
    for part, lvl, g in roi_fpn_grads(adapter, fwd, preds, target):
        with torch.no_grad():
            sigma = None
            if method == 'odam' and smooth == 'gaussian':
                sigma = box_sigma(preds.bboxes[part] * scale[preds.img[part]].repeat(1, 2),
                                  strides[lvl], max_sigma=max(g.shape[-2:]))
            maps = explanation_maps(method, g, fwd.levels[lvl].detach()[preds.img[part]],
                                    sigma)
            for j, p in enumerate(part.tolist()):
                b = int(preds.img[p])
                out = dets[b].heatmaps
                origin, image_hw = image_window(metas[b])
                out[p - int(offsets[b])] = resize_maps(maps[j:j + 1], strides[lvl], image_hw,
                                                       out.shape[-2:], origin)[0]


def roi_positive_maps(bbox_results: dict, positives: InstanceData, grid_hw, map_stride: int,
                      second_order: bool) -> torch.Tensor:
    """ODAM maps ``(N, *grid_hw)`` of a stage's positive RoIs (``roi``, ``labels``, ``rois``
    x1y1x2y2 input pixels) on the stride-``map_stride`` grid:
    Y = the logit of each positive's assigned class, A = its RoI features
    (``bbox_results['bbox_feats']`` (R, C, s, s)), one backward for all (RoIs are
    independent), each map pasted into its RoI; with the graph to the features
    (``second_order``: also of dY/dA, so the loss trains the box head too)."""
    feats = bbox_results['bbox_feats']
    y = bbox_results['cls_score'][positives.roi, positives.labels]
    grads, = torch.autograd.grad(y.sum(), feats, retain_graph=True, create_graph=second_order)
    sigma = feats.new_full((len(positives),), SIGMA_PER_BOX_SIZE * feats.shape[-1])
    maps = odam_heatmap(grads[positives.roi], feats[positives.roi], sigma)
    return paste_roi_maps(maps, positives.rois / map_stride, grid_hw)
