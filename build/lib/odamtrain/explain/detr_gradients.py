"""ODAM gradients and maps of a DETR-like detector's predictions (A: see
:mod:`odamtrain.explain.adapters.detr`): one vectorised backward through the transformer for
a chunk of predictions, never one backward per query.

Shapes: n predictions, L levels of A, C channels, (h, w) a level, (H, W) a map.
"""
from __future__ import annotations

import torch
from mmengine.structures import InstanceData

from .batched_autograd import batched_vjps
from .heatmap import box_sigma, explanation_maps, output_size, resize_maps
from .settings import ExplanationSettings

__all__ = ['detr_grads', 'detr_heatmaps', 'DETR_BUDGET', 'DETR_CHUNK']

# elements of A times predictions per vectorised backward, and at most DETR_CHUNK
# predictions: the vectorised backward through the transformer holds its activations once per
# prediction of the chunk
DETR_BUDGET = 2 ** 23
DETR_CHUNK = 4


def detr_grads(adapter, fwd, preds, target: str, chunk: int | None = None):
    """Yield (indices, per level (n, C, h, w) dY/dA_level) for chunks of the predictions."""
    with torch.enable_grad():
        y = adapter.attribute(target, fwd, preds)
    if chunk is None:
        chunk = max(1, min(DETR_CHUNK, DETR_BUDGET // sum(leaf.numel() for leaf in fwd.leaves)))
    for idx, grads in batched_vjps(y, fwd.leaves, chunk, type(adapter.model).__name__):
        img = preds.img[idx]
        picked = [torch.zeros_like(leaf[img]) if g is None else g[torch.arange(len(idx)), img]
                  for g, leaf in zip(grads, fwd.leaves)]
        yield idx, _as_levels(fwd, picked)


def _as_levels(fwd, per_leaf: list) -> list:
    """Per-leaf tensors (n, *leaf.shape[1:]) -> per level (n, C, h, w), as A's levels are
    made from the leaves (the same tensors, or the memory's tokens split by level)."""
    if len(fwd.leaves) == len(fwd.feats) and all(
            leaf is level for leaf, level in zip(fwd.leaves, fwd.feats)):
        return per_leaf
    tokens, out, start = per_leaf[0], [], 0  # [n, T, C]
    for lv in fwd.feats:
        _, c, h, w = lv.shape
        out.append(tokens[:, start:start + h * w].transpose(1, 2).reshape(-1, c, h, w))
        start += h * w
    return out


def detr_heatmaps(adapter, fwd, dets: list, settings: ExplanationSettings) -> None:
    """Set ``heatmaps`` (N, H, W) at the settings' ``map_size`` on each image's predictions
    (``img``, ``query``, ``labels``, ``bboxes`` original pixels): per level of A the map of
    its gradient, resized to the image, summed over the levels."""
    method, target, smooth = settings.method, settings.target, settings.smooth
    preds = InstanceData.cat(dets) if dets else InstanceData()
    scale = torch.tensor([m['scale_factor'][:2] for m in fwd.metas],
                         dtype=fwd.feats[0].dtype, device=fwd.feats[0].device)
    sizes = [output_size(m['ori_shape'][:2], settings.map_size) for m in fwd.metas]
    maps = [fwd.feats[0].new_zeros(len(d), *hw) for d, hw in zip(dets, sizes)]
    offsets = torch.tensor([0] + [len(d) for d in dets]).cumsum(0)
    if len(preds):
        for idx, level_grads in detr_grads(adapter, fwd, preds, target):
            img = preds.img[idx]
            with torch.no_grad():
                for g, a, stride in zip(level_grads, fwd.feats, fwd.strides):
                    h, w = a.shape[-2:]
                    sigma = None
                    if method == 'odam' and smooth == 'gaussian':
                        sigma = box_sigma(preds.bboxes[idx] * scale[img].repeat(1, 2), stride,
                                          max_sigma=max(h, w))
                    level = explanation_maps(method, g, a.detach()[img], sigma)
                    for b in img.unique().tolist():
                        sel = (img == b).nonzero()[:, 0]
                        rows = idx[sel] - int(offsets[b])
                        maps[b][rows] += resize_maps(level[sel], stride,
                                                     fwd.metas[b]['img_shape'][:2], sizes[b])
    for det, m in zip(dets, maps):
        det.heatmaps = m
