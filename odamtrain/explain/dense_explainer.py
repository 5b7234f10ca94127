"""Heat maps for every detection of a one-stage dense detector (FCOS), in batch."""
from __future__ import annotations

import torch
from mmengine.logging import print_log
from mmengine.structures import InstanceData

from odamtrain.ops import odam_nms_keep

from .dense import (
    dense_detections,
    dense_grads_exact,
    dense_grads_fast,
    dense_target_candidates,
    fast_window_support,
    gather_windows,
    paste_windows,
    record_tower_state,
    smoothing_radius,
    window_radius,
)
from .heatmap import box_sigma, explanation_maps, odam_heatmap, resize_maps

__all__ = ['explain_dense_detector', 'dense_heatmaps', 'level_heatmaps', 'output_size']

# In 'fast' mode a level whose map holds fewer than this many windows is done 'exact': the
# window would cover much of it (no saving), and the GroupNorm-statistics term that 'fast'
# leaves out is largest on small maps (it is spread over h * w positions).
EXACT_BELOW_WINDOWS = 8

# Elements of one (n, C, k, k) tensor while smoothing gradient windows (16 M = 64 MB fp32;
# smoothing holds about five such tensors).
SMOOTHING_BUDGET = 2 ** 24
# Maps resized to the image at a time (each holds a few (n, H, W) temporaries).
RESIZE_CHUNK = 32


def explain_dense_detector(model, inputs: torch.Tensor, data_samples: list, method: str,
                           target: str, smooth: str | None, mode: str, map_size='image',
                           chunk: int = 256, targets: list | None = None) -> list[InstanceData]:
    """Detections of a dense detector and a heat map for each, all computed in batch.

    Args:
        inputs: (B, 3, H_in, W_in) the preprocessed batch; data_samples: their metainfo.
        method: 'odam' | 'gradcam' | 'gradcampp'; target: see :data:`dense.TARGETS`;
        smooth: 'gaussian' or None (ODAM's Phi); mode: 'fast' | 'windows' | 'exact' (see
            :func:`dense_heatmaps`).
        map_size: 'image' (original image size) or an int: the maps' short edge.
        chunk: detections per vectorised step (bounds memory).
        targets: per image (``bboxes`` original pixels, ``labels``) to explain instead of
            the detections: each by its best prediction (:func:`dense_target_candidates`).
    Returns:
        Per image mmdet's detections (``bboxes`` in original pixels x1y1x2y2, ``scores``,
        ``labels``) plus ``level``, ``loc`` and ``heatmaps`` (N, H, W), >= 0, unnormalised.
    """
    head = model.bbox_head
    metas = [s.metainfo for s in data_samples]
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        with record_tower_state(head) as tower_state:
            cls_scores, bbox_preds, factors = head(feats)
    nms_cfg = (head.test_cfg or {}).get('nms', {})
    per_image = [([c[i] for c in cls_scores], [r[i] for r in bbox_preds],
                  [f[i] for f in factors] if factors is not None else None, meta)
                 for i, meta in enumerate(metas)]
    if targets is not None:
        dets = [dense_target_candidates(head, *outs, tgt)
                for outs, tgt in zip(per_image, targets)]
    elif nms_cfg.get('type') == 'odam_nms':  # the head's own Odam-NMS picks the detections
        dets = []
        for cand in head.odam_candidates(feats, metas, nms_cfg):
            det = cand[odam_nms_keep(cand, nms_cfg, head.test_cfg.get('max_per_img', -1))]
            del det.heatmaps
            dets.append(det)
    else:
        dets = [dense_detections(head, *outs) for outs in per_image]
    dense_heatmaps(head, feats, dets, metas, method, target, smooth, mode, tower_state,
                   map_size, chunk)
    return dets


def dense_heatmaps(head, feats, dets: list, metas: list, method: str, target: str,
                   smooth: str | None, mode: str, tower_state: dict, map_size='image',
                   chunk: int = 256) -> None:
    """Set ``heatmaps`` (N, H, W) on each image's detections (``labels``, ``level``, ``loc``,
    ``bboxes`` in original pixels, as :func:`dense.dense_detections` returns them).

    Args:
        feats: the FPN levels (B, C, h, w) the detections were made from; tower_state: what
            :func:`dense.record_tower_state` recorded during that forward.
        mode: 'fast' (windows; levels under :data:`EXACT_BELOW_WINDOWS` windows exact),
            'windows' (windows on every level: cheaper, leaves the GroupNorm-statistics term
            out also on small levels) or 'exact'.
    """
    if mode in ('fast', 'windows'):
        reason = fast_window_support(head)
        if reason is not None:
            print_log(f'ODAM: fast mode does not apply ({reason}); using exact mode',
                      logger='current')
            mode = 'exact'
    elif mode != 'exact':
        raise ValueError(f"mode must be 'fast', 'windows' or 'exact', got {mode!r}")
    scale = torch.tensor([m['scale_factor'][:2] for m in metas], dtype=feats[0].dtype,
                         device=feats[0].device)  # [B, 2] input / original (w, h)
    # Everything below runs without recording a graph (the gradient functions record what
    # they need themselves): a graph through the maps would keep every chunk alive.
    with torch.no_grad():
        for i, (det, meta) in enumerate(zip(dets, metas)):
            out_hw = output_size(meta['ori_shape'][:2], map_size)
            det.heatmaps = feats[0].new_zeros(len(det), *out_hw)
            det_b = InstanceData(labels=det.labels, loc=det.loc, bboxes=det.bboxes,
                                 img=torch.full_like(det.labels, i))
            for level, feat in enumerate(feats):
                small = mode == 'fast' and feat.shape[-2] * feat.shape[-1] < (
                    EXACT_BELOW_WINDOWS * (2 * window_radius(head) + 1) ** 2)
                # a small level: the window would cover much of it
                level_mode = 'exact' if small or mode == 'exact' else 'fast'
                idx = (det.level == level).nonzero()[:, 0]
                for part in idx.split(chunk) if len(idx) else ():
                    maps = level_heatmaps(head, feat, level, det_b[part], method, target, smooth,
                                          level_mode, scale, tower_state)
                    for j in range(0, len(part), RESIZE_CHUNK):  # (n, H, W) temporaries
                        det.heatmaps[part[j:j + RESIZE_CHUNK]] = resize_maps(
                            maps[j:j + RESIZE_CHUNK], head.strides[level],
                            meta['img_shape'][:2], out_hw)


def output_size(ori_hw, map_size) -> tuple[int, int]:
    """(H, W) of the output maps: the original size, or short edge ``map_size``."""
    if map_size == 'image':
        return int(ori_hw[0]), int(ori_hw[1])
    s = map_size / min(ori_hw)
    return max(1, round(ori_hw[0] * s)), max(1, round(ori_hw[1] * s))


def level_heatmaps(head, feat, level, det, method, target, smooth, mode, scale, tower_state,
                   create_graph: bool = False):
    """(n, h, w) maps on this level for the detections ``det`` (``labels``, ``loc``,
    ``bboxes``, ``img``; all of this level).

    Under grad mode the maps keep ``feat``'s graph (Odam-Train); ``create_graph`` ('fast' mode)
    also keeps the gradients' graph to the head's weights."""
    h, w = feat.shape[-2:]
    b = det.img
    stride = head.strides[level]
    sigma = None
    if method == 'odam' and smooth == 'gaussian':
        sigma = box_sigma(det.bboxes * scale[b].repeat(1, 2), stride)
    if mode == 'exact':
        maps = []
        for idx, g in dense_grads_exact(head, feat, level, det, target, scale, b, tower_state):
            maps.append(explanation_maps(method, g, feat[b[idx]],
                                         None if sigma is None else sigma[idx]))
        return torch.cat(maps) if maps else feat.new_zeros(0, h, w)
    grads, windows = dense_grads_fast(head, feat, level, det, target, scale, b, tower_state,
                                      create_graph)
    ys, xs = det.loc // w, det.loc % w
    if method != 'odam':
        return explanation_maps(method, grads, windows, area=h * w,
                                full_feats=feat.detach()[b])
    if sigma is None:
        return paste_windows(odam_heatmap(grads, windows), ys, xs, (h, w))
    # Phi spreads the gradient by 3 sigma: grow each window by that much, in groups of
    # similar sigma so that one large box does not grow every window, and few enough per
    # group to keep the (n, C, k, k) tensors under SMOOTHING_BUDGET elements.
    maps = grads.new_zeros(len(det), h, w)
    order = torch.argsort(sigma)
    start = 0
    while start < len(order):
        count = len(order) - start
        while True:  # shrink the group until it fits with its largest sigma (sorted)
            last = order[start + count - 1]
            k = grads.shape[-1] + 2 * smoothing_radius(sigma[last:last + 1])
            fit = max(1, SMOOTHING_BUDGET // (grads.shape[1] * k * k))
            if fit >= count:
                break
            count = fit
        part = order[start:start + count]
        rs = smoothing_radius(sigma[part])
        g = torch.nn.functional.pad(grads[part], (rs, rs, rs, rs))
        a, _ = gather_windows(feat, b[part], ys[part], xs[part], window_radius(head) + rs)
        maps[part] = paste_windows(odam_heatmap(g, a, sigma[part]), ys[part], xs[part], (h, w))
        start += len(part)
    return maps
