"""ODAM gradients and maps of a dense head's predictions: A = the FPN level that made each
prediction, for all predictions of a level at once (never one backward per prediction).

Shapes: B images, L levels, n predictions, C channels, (h, w) a level's size.

Modes (:func:`level_maps`):

* ``exact``: the full gradient on the whole level, normalisation statistics differentiated.
  Heads with conv towers (:meth:`~odamtrain.explain.adapters.DenseHeadAdapter.fast_support`)
  are back-propagated explicitly: autograd through the final layers on small windows of the
  towers' outputs, then the towers on the whole map (:func:`conv_towers.map_backward`), a
  chunk of predictions at a time. Any other head by vectorised autograd of its ``forward``
  (``is_grads_batched``), chunked by memory.
* ``fast``: with GroupNorm statistics held constant, dY/dA is zero outside a window of
  radius (tower depth + final-conv radius) around the prediction's location; the gradient is
  carried down the towers on windows (:func:`conv_towers.window_backward`). Levels smaller
  than :data:`EXACT_BELOW_WINDOWS` windows are done exactly.
* ``windows``: windows on every level (cheaper; leaves the GroupNorm-statistics term out
  also on small levels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from mmengine.structures import InstanceData

from odamtrain.inference import image_window

from .batched_autograd import batched_vjps
from .conv_towers import (
    TowerRecord,
    gather_windows,
    map_backward,
    paste_windows,
    record_towers,
    window_backward,
    window_on_map,
)
from .heatmap import (
    box_sigma,
    explanation_maps,
    odam_heatmap,
    output_size,
    resample_maps,
    resize_maps,
    smooth_windows,
)
from .protocol import Forward, scales
from .settings import ExplanationSettings

__all__ = ['DenseForward', 'dense_forward', 'dense_heatmaps', 'dense_train_maps', 'level_maps',
           'window_radius', 'EXACT_BELOW_WINDOWS', 'MODES', 'TRAIN_MAPS']

MODES = ('fast', 'windows', 'exact')
# In 'fast' mode a level whose map holds fewer than this many windows is done 'exact': the
# window would cover much of it (no saving), and the GroupNorm-statistics term that 'fast'
# leaves out is largest on small maps (it is spread over h * w positions).
EXACT_BELOW_WINDOWS = 8
# Elements of one level map times predictions per vectorised backward in exact mode (the
# backward holds a few dozen such tensors: 2^22 elements = 16 MB each).
EXACT_BUDGET = 2 ** 22
# Elements of one (n, C, k, k) tensor while smoothing gradient windows (16 M = 64 MB fp32;
# smoothing holds about five such tensors).
SMOOTHING_BUDGET = 2 ** 24
# Predictions of one level per vectorised step (bounds memory); maps resized at a time
CHUNK = 256
RESIZE_CHUNK = 32
# Odam-Train's maps: the assigned class's logit, the paper's Phi, 'windows' gradients
TRAIN_MAPS = ExplanationSettings(method='odam', target='logit', smooth='gaussian',
                                 normalize=None, mode='windows')


@dataclass
class DenseForward(Forward):
    """One forward of a dense head, reused by every explanation of its predictions:
    ``feats`` L x (B, C, h, w) (A: the FPN levels), the images' ``metas``, the head's
    ``outputs``, the ``record`` of its towers (None where the explicit modes do not apply)
    and ``calls``: per level, {tower layer: which of its recorded calls made that level}."""
    outputs: tuple = ()
    record: TowerRecord | None = None
    calls: list | None = None


def dense_forward(adapter, feats, metas: list, record: bool = True) -> DenseForward:
    """Run the head on ``feats`` (recording its towers when ``record`` and the head has
    supported towers), under the caller's grad mode."""
    head = adapter.head
    if not record or adapter.fast_support() is not None:
        return DenseForward(list(feats), metas, head(feats))
    towers = [adapter.towers(level) for level in range(len(feats))]
    calls, count = [], {}
    for level_towers in towers:
        calls.append({})
        for m in (m for tower in level_towers for m in tower):
            calls[-1][m] = count.get(m, 0)
            count[m] = count.get(m, 0) + 1
    layers = [m for level_towers in towers for tower in level_towers for m in tower]
    last = [tower[-1] for level_towers in towers for tower in level_towers if tower]
    with record_towers(layers, last) as rec:
        outputs = head(feats)
    return DenseForward(list(feats), metas, outputs, rec, calls)


def window_radius(adapter, level: int) -> int:
    """Half-width of dY/dA's support on a level: tower depth + the final convs' radius."""
    return max(len(tower) for tower in adapter.towers(level)) + adapter.final_radius


def _tower_output(fwd: DenseForward, layers, level: int, feat: torch.Tensor):
    return fwd.record.get('out', layers[-1], fwd.calls[level][layers[-1]]) if layers else feat


def final_window_grads(adapter, fwd: DenseForward, level: int, preds: InstanceData,
                       target: str, scale: torch.Tensor, create_graph: bool = False):
    """dY/d(each tower's output) (the cls and reg towers, or a head's branches) on the
    (n, C, k, k) windows (k = 2 * final radius + 1) around each prediction's location (None
    for a tower Y does not depend on), by autograd through the head's final layers and the
    attribute."""
    feat = fwd.feats[level]
    h, w = feat.shape[-2:]
    ys, xs, anchor = adapter.location(level, preds.prior, (h, w))
    r = adapter.final_radius
    with torch.enable_grad():
        wins = [gather_windows(_tower_output(fwd, layers, level, feat), preds.img, ys, xs,
                               r).detach().requires_grad_(True)
                for layers in adapter.towers(level)]
        rows = adapter.rows_at(level, adapter.final_layers(level, *wins), anchor)
        y = adapter.attribute_of_rows(target, rows, preds, adapter.prior_coords(fwd, preds),
                                      scale[preds.img])
        return torch.autograd.grad(y.sum(), wins, allow_unused=True,
                                   create_graph=create_graph)


def window_grads(adapter, fwd: DenseForward, level: int, preds: InstanceData, target: str,
                 scale: torch.Tensor, create_graph: bool = False):
    """dY/dA in the window of radius :func:`window_radius` around each prediction's location
    (all at once), statistics held constant.

    Returns:
        grads (n, C, k, k) (zero off the map) and the windows of A (same shape, with
        ``feats``' graph when grad mode is on).
    """
    feat = fwd.feats[level]
    h, w = feat.shape[-2:]
    ys, xs, _ = adapter.location(level, preds.prior, (h, w))
    deltas = final_window_grads(adapter, fwd, level, preds, target, scale, create_graph)
    # the explicit backward multiplies by parameters: a graph only when asked for
    with torch.set_grad_enabled(create_graph):
        grads = 0
        for layers, delta in zip(adapter.towers(level), deltas):
            if delta is not None:
                grads = grads + window_backward(layers, fwd.record, fwd.calls[level], delta,
                                                preds.img, ys, xs, (h, w))
    win = gather_windows(feat, preds.img, ys, xs, window_radius(adapter, level))
    if not torch.is_tensor(grads):
        grads = torch.zeros_like(win)
    return grads, win


def exact_grads(adapter, fwd: DenseForward, level: int, preds: InstanceData, target: str,
                scale: torch.Tensor, chunk: int | None = None):
    """Yield (indices, grads (n, C, h, w)) = dY/dA_level for chunks of the predictions of
    this level, exactly (statistics differentiated). ``chunk`` predictions at a time
    (default: as many as :data:`EXACT_BUDGET` allows)."""
    feat = fwd.feats[level]
    explicit = fwd.record is not None
    if chunk is None:  # the explicit backward covers one image's map, autograd the batch's
        chunk = max(1, EXACT_BUDGET // (feat[:1] if explicit else feat).numel())
    if explicit:
        yield from _explicit_exact_grads(adapter, fwd, level, preds, target, scale, chunk)
        return
    with torch.enable_grad():  # only the forward records a graph (not the consumer's code)
        leaf = feat.detach().requires_grad_(True)
        feats = [leaf if i == level else f.detach() for i, f in enumerate(fwd.feats)]
        outputs = adapter.head(feats)
        y = adapter.attribute_of_rows(target, adapter.rows(outputs, preds), preds,
                              adapter.prior_coords(fwd, preds), scale[preds.img])
    for idx, (g,) in batched_vjps(y, [leaf], chunk, type(adapter.head).__name__):
        yield idx, g[torch.arange(len(idx)), preds.img[idx]]  # g: [n, B, C, h, w]


def _explicit_exact_grads(adapter, fwd, level, preds, target, scale, chunk):
    """:func:`exact_grads` for heads with conv towers: the final layers by autograd on
    windows, then the towers on the whole map, image by image."""
    feat = fwd.feats[level]
    h, w = feat.shape[-2:]
    ys, xs, _ = adapter.location(level, preds.prior, (h, w))
    deltas = final_window_grads(adapter, fwd, level, preds, target, scale)
    for img in preds.img.unique().tolist():
        for idx in (preds.img == img).nonzero()[:, 0].split(chunk):
            grads = feat.new_zeros(len(idx), *feat.shape[1:])
            for layers, delta in zip(adapter.towers(level), deltas):
                if delta is not None:
                    full = paste_windows(delta[idx], ys[idx], xs[idx], (h, w))
                    grads += (map_backward(layers, fwd.record, fwd.calls[level], full, img)
                              if layers else full)
            yield idx, grads


def level_mode(adapter, fwd: DenseForward, level: int, mode: str) -> str:
    """The mode a level is done in: 'windows' where the head supports them and the level is
    large enough (``mode`` 'fast') or always ('windows'), else 'exact'."""
    if mode == 'exact' or fwd.record is None:
        return 'exact'
    h, w = fwd.feats[level].shape[-2:]
    small = h * w < EXACT_BELOW_WINDOWS * (2 * window_radius(adapter, level) + 1) ** 2
    return 'exact' if mode == 'fast' and small else 'windows'


def tower_window_grads(adapter, fwd: DenseForward, level: int, preds: InstanceData,
                       target: str, scale: torch.Tensor):
    """dY/dT for A = T, the head's towers' outputs on this level (the inputs of its final
    layers, concatenated along channels; the towers Y does not depend on left out), on the
    windows of radius :attr:`final_radius` around each prediction: exact (no statistics
    in between).

    Returns:
        grads (n, C_T, k, k) and T (B, C_T, h, w).
    """
    feat = fwd.feats[level]
    h, w = feat.shape[-2:]
    ys, xs, _ = adapter.location(level, preds.prior, (h, w))
    deltas = final_window_grads(adapter, fwd, level, preds, target, scale)
    used = [(layers, d) for layers, d in zip(adapter.towers(level), deltas) if d is not None]
    towers = torch.cat([_tower_output(fwd, layers, level, feat) for layers, _ in used], 1)
    on_map = window_on_map(ys, xs, adapter.final_radius, (h, w))  # the padding has no A
    return torch.cat([d for _, d in used], 1) * on_map, towers


def level_maps(adapter, fwd: DenseForward, level: int, preds: InstanceData,
               settings: ExplanationSettings, mode: str, scale: torch.Tensor,
               create_graph: bool = False) -> torch.Tensor:
    """(n, h, w) maps on this level of its predictions (``img``, ``level``, ``prior``,
    ``labels``, ``bboxes`` x1y1x2y2 in original pixels), by the settings' ``method``,
    ``target``, ``smooth`` and ``features`` (A: the FPN level, or 'towers': the towers'
    outputs, whose gradients need no backward through the towers).

    Args:
        mode: :func:`level_mode`'s result for this level ('windows' or 'exact'; A =
            'towers' is always exact).
        scale: (B, 2) input / original (w, h) per image.
        create_graph: ('windows') keep the gradients' graph to the head's weights.
    Under grad mode the maps keep ``feats``' graph (Odam-Train).
    """
    method, target, smooth = settings.method, settings.target, settings.smooth
    feat = fwd.feats[level]
    h, w = feat.shape[-2:]
    b = preds.img
    stride = adapter.level_stride(fwd, level)
    sigma = None
    if method == 'odam' and smooth == 'gaussian':
        sigma = box_sigma(preds.bboxes * scale[b].repeat(1, 2), stride, max_sigma=max(h, w))
    ys, xs, _ = adapter.location(level, preds.prior, (h, w))
    if settings.features == 'towers':
        grads, feat = tower_window_grads(adapter, fwd, level, preds, target, scale)
        windows = gather_windows(feat, b, ys, xs, adapter.final_radius)
    elif mode == 'exact':
        maps = [explanation_maps(method, g, feat[b[idx]], None if sigma is None else sigma[idx])
                for idx, g in exact_grads(adapter, fwd, level, preds, target, scale)]
        return torch.cat(maps) if maps else feat.new_zeros(0, h, w)
    else:
        grads, windows = window_grads(adapter, fwd, level, preds, target, scale, create_graph)
    if method != 'odam':
        return explanation_maps(method, grads, windows, area=h * w,
                                full_feats=feat.detach()[b])
    if sigma is None:
        return paste_windows(odam_heatmap(grads, windows), ys, xs, (h, w))
    return _smoothed_window_maps(feat, grads, sigma, b, ys, xs)


def _smoothed_window_maps(feat, grads, sigma, b, ys, xs) -> torch.Tensor:
    """ODAM maps of (n, C, k, k) window gradients of A = ``feat`` (B, C, h, w) with Phi:
    Phi spreads the gradient by 3 sigma, so each window grows by that much, in groups of
    similar sigma (one large box does not grow every window) small enough to keep the
    (n, C, k, k) tensors under :data:`SMOOTHING_BUDGET`."""
    h, w = feat.shape[-2:]
    radius = grads.shape[-1] // 2
    maps = grads.new_zeros(len(grads), h, w)
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
        g = smooth_windows(grads[part], sigma[part], rs)  # Phi
        a = gather_windows(feat, b[part], ys[part], xs[part], radius + rs)
        maps[part] = paste_windows(odam_heatmap(g, a), ys[part], xs[part], (h, w))
        start += len(part)
    return maps


def smoothing_radius(sigma: torch.Tensor | None) -> int:
    """Cells a Gaussian of the largest sigma reaches (3 sigma), 0 without smoothing."""
    return 0 if sigma is None or sigma.numel() == 0 else int(math.ceil(3 * float(sigma.max())))


def dense_heatmaps(adapter, fwd: DenseForward, dets: list, settings: ExplanationSettings) -> None:
    """Set ``heatmaps`` (N, H, W) at the settings' ``map_size`` on each image's predictions
    (``img``, ``level``, ``prior``, ``labels``, ``bboxes`` original pixels)."""
    adapter.check_features(settings.features)
    scale = scales(fwd.metas, fwd.feats[0])
    modes = [level_mode(adapter, fwd, level, settings.mode)
             for level in range(len(fwd.feats))]
    # no graph through the maps: it would keep every chunk alive (the gradient functions
    # record what they need themselves)
    with torch.no_grad():
        for det, meta in zip(dets, fwd.metas):
            out_hw = output_size(meta['ori_shape'][:2], settings.map_size)
            origin, image_hw = image_window(meta)
            preds = InstanceData(**{k: det.get(k) for k in ('img', 'level', 'prior', 'labels',
                                                             'bboxes')})
            heatmaps = fwd.feats[0].new_empty(len(det), *out_hw)  # every row is written
            for level in det.level.unique().tolist():
                idx = (det.level == level).nonzero()[:, 0]
                stride = adapter.level_stride(fwd, level)
                for part in idx.split(CHUNK):
                    maps = level_maps(adapter, fwd, level, preds[part], settings,
                                      modes[level], scale)
                    for j in range(0, len(part), RESIZE_CHUNK):  # (n, H, W) temporaries
                        heatmaps[part[j:j + RESIZE_CHUNK]] = resize_maps(
                            maps[j:j + RESIZE_CHUNK], stride, image_hw, out_hw, origin)
            det.heatmaps = heatmaps


def dense_train_maps(adapter, fwd: DenseForward, positives: InstanceData, grid_hw,
                     map_stride: int, second_order: bool) -> torch.Tensor:
    """Odam-Train's maps ``(N, *grid_hw)`` of positives (``img``, ``level``, ``prior``,
    ``labels``, ``bboxes`` input pixels) on the stride-``map_stride`` grid: 'windows'
    gradients of the assigned class's logit on their FPN level (:data:`TRAIN_MAPS`), with
    the graph to the features (``second_order``: also to the head's weights)."""
    maps = fwd.feats[0].new_zeros(len(positives), *grid_hw)
    scale = fwd.feats[0].new_ones(len(fwd.metas), 2)  # the positives' boxes: input pixels
    for level in positives.level.unique().tolist():
        idx = (positives.level == level).nonzero()[:, 0]
        level_map = level_maps(adapter, fwd, level, positives[idx], TRAIN_MAPS, 'windows',
                               scale, create_graph=second_order)
        stride = adapter.level_stride(fwd, level)
        maps[idx] = resample_maps(level_map, stride, map_stride, grid_hw)
    return maps
