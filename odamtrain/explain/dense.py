"""ODAM gradients for one-stage dense heads (FCOS): A = the FPN level that made p.

Shapes: B images, L levels, N predictions, C channels, K classes, (h, w) a level's size.

Two ways to get dY_p/dA for all predictions at once (never one backward per prediction):

* ``exact``: the full gradient on the whole level map, GroupNorm statistics differentiated.
  For the plain FCOS towers below it is propagated explicitly (transposed convs on the whole
  map, the exact GroupNorm backward with the statistics recorded during the forward), for
  all predictions of a chunk at once; for any other head by vectorised autograd
  (``is_grads_batched``) of the head, which loops over predictions inside. Chunks of
  predictions keep memory bounded.
* ``fast``: the FCOS towers are ``n x (conv3x3 + GN + ReLU)`` plus a final conv3x3, so with
  GroupNorm statistics held constant dY_p/dA is zero outside a (2n+3) x (2n+3) window around
  p's location. For all predictions at once, the gradient at the towers' 3x3 output windows
  comes from autograd through the final convs and the attribute; it is then propagated down
  the towers on windows (transposed convs growing 3 -> 5 -> ... -> 2n+3), with the ReLU masks
  and GN statistics recorded during the forward and positions off the map dropped (the full
  model's zero padding). Equal to autograd with detached GN statistics; the GN-statistics
  term it leaves out is small on large maps (see README).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.utils import filter_scores_and_topk
from mmdet.structures.bbox import cat_boxes
from mmengine.structures import InstanceData

__all__ = ['TARGETS', 'dense_detections', 'dense_target_candidates', 'dense_attribute',
           'fast_window_support', 'dense_grads_exact', 'dense_grads_fast', 'record_tower_state',
           'frozen_group_norm_stats']

TARGETS = ('score', 'logit', 'x1', 'y1', 'x2', 'y2')


def dense_detections(head, cls_scores, bbox_preds, score_factors, img_meta: dict,
                     cfg=None, rescale: bool = True, with_nms: bool = True) -> InstanceData:
    """``head.predict_by_feat`` for one image that also returns where each detection comes
    from: ``level`` (L index) and ``loc`` (flattened y * w + x on that level).

    Same selection as mmdet's ``BaseDenseHead._predict_by_feat_single`` (score threshold,
    ``nms_pre`` top-k per level, decoding) and mmdet's own ``_bbox_post_process`` (score
    factors, rescale, NMS, ``max_per_img``), which carries the extra fields along.

    Args:
        cls_scores / bbox_preds / score_factors: per level (K, h, w) / (4, h, w) / (1, h, w)
            for this image (score_factors may be None).
    """
    cfg = head.test_cfg if cfg is None else cfg
    sizes = [s.shape[-2:] for s in cls_scores]
    priors = head.prior_generator.grid_priors(sizes, dtype=cls_scores[0].dtype,
                                              device=cls_scores[0].device)
    nms_pre = cfg.get('nms_pre', -1)
    bboxes, scores, labels, factors, levels, locs, kept_priors = ([] for _ in range(7))
    for level, (cls, reg, prior) in enumerate(zip(cls_scores, bbox_preds, priors)):
        reg = reg.permute(1, 2, 0).reshape(-1, head.bbox_coder.encode_size)
        cls = cls.permute(1, 2, 0).reshape(-1, head.cls_out_channels)
        prob = cls.sigmoid() if head.use_sigmoid_cls else cls.softmax(-1)[:, :-1]
        score, label, keep, kept = filter_scores_and_topk(
            prob, cfg.get('score_thr', 0), nms_pre,
            dict(bbox_pred=reg, priors=prior, loc=torch.arange(len(prior), device=reg.device)))
        bboxes.append(kept['bbox_pred'])
        kept_priors.append(kept['priors'])
        scores.append(score)
        labels.append(label)
        locs.append(kept['loc'])
        levels.append(torch.full_like(label, level))
        if score_factors is not None:
            factors.append(score_factors[level].permute(1, 2, 0).reshape(-1).sigmoid()[keep])
    results = InstanceData()
    results.bboxes = head.bbox_coder.decode(cat_boxes(kept_priors), torch.cat(bboxes),
                                            max_shape=img_meta['img_shape'])
    results.scores = torch.cat(scores)
    results.labels = torch.cat(labels)
    results.level = torch.cat(levels)
    results.loc = torch.cat(locs)
    if score_factors is not None:
        results.score_factors = torch.cat(factors)
    return head._bbox_post_process(results=results, cfg=cfg, rescale=rescale,
                                   with_nms=with_nms, img_meta=img_meta)


def dense_target_candidates(head, cls_scores, bbox_preds, score_factors, img_meta: dict,
                            targets: InstanceData) -> InstanceData:
    """For each target (``bboxes`` (T, 4) x1y1x2y2 original pixels, ``labels`` (T,)), the
    prediction of the head that finds it best among every location and class (no score
    threshold, no top-k, no NMS): :func:`odamtrain.evaluation.functional.best_candidates`
    on mmdet's decoded boxes and scores. Returns T predictions with
    :func:`dense_detections`' fields (``labels`` the targets'), e.g. to explain an object
    the detector missed."""
    from odamtrain.evaluation.functional import target_predictions
    every = dense_detections(head, cls_scores, bbox_preds, score_factors, img_meta,
                             cfg=dict(score_thr=-1, nms_pre=sum(c.numel() for c in cls_scores)),
                             with_nms=False)
    return target_predictions(every, targets)


def dense_attribute(head, target: str, cls: torch.Tensor, reg: torch.Tensor,
                    factor: torch.Tensor | None, labels: torch.Tensor, points: torch.Tensor,
                    scale_factor: torch.Tensor) -> torch.Tensor:
    """The explained attribute Y of N predictions from the head's outputs at their locations.

    Args:
        cls: (N, K) class logits; reg: (N, 4) test-time box regression (distances in input
            pixels for FCOS); factor: (N,) score-factor logit (FCOS centerness) or None;
        labels: (N,) class; points: (N, 2) the locations' priors (input pixels);
        scale_factor: (2,) input / original (w, h).
        target: 'score' (mmdet's score: sigmoid(cls) * sigmoid(centerness)), 'logit', or a
            box coordinate 'x1' | 'y1' | 'x2' | 'y2' in original-image pixels (not clipped to
            the image, so border boxes keep their gradient).
    Returns:
        (N,) Y.
    """
    logit = cls.gather(1, labels[:, None])[:, 0]
    if target == 'logit':
        return logit
    if target == 'score':
        score = logit.sigmoid() if head.use_sigmoid_cls else cls.softmax(-1).gather(
            1, labels[:, None])[:, 0]
        return score * factor.sigmoid() if factor is not None else score
    if target in ('x1', 'y1', 'x2', 'y2'):
        boxes = head.bbox_coder.decode(points, reg)  # [N, 4] input pixels
        i = ('x1', 'y1', 'x2', 'y2').index(target)
        return boxes[:, i] / scale_factor[i % 2]
    raise ValueError(f'target must be one of {TARGETS}, got {target!r}')


def _test_time_reg(head, raw_reg: torch.Tensor, level: int) -> torch.Tensor:
    """FCOSHead.forward_single's regression post-processing (eval mode)."""
    reg = head.scales[level](raw_reg).float()
    if head.norm_on_bbox:
        return reg.clamp(min=0) * head.strides[level]
    return reg.exp()


def _factor_conv(head):
    return head.conv_centerness if hasattr(head, 'conv_centerness') else None


# ----------------------------------------------------------------------------- exact mode

# Elements of one level map times predictions per vectorised backward in exact mode (the
# backward holds a few dozen such tensors: 2^22 elements = 16 MB each).
EXACT_BUDGET = 2 ** 22


def dense_grads_exact(head, feat: torch.Tensor, level: int, det: InstanceData, target: str,
                      scale_factors: torch.Tensor, batch_index: torch.Tensor,
                      state: dict | None = None, chunk: int | None = None):
    """Yield (indices, grads) with grads (n, C, h, w) = dY/dA_level for chunks of the
    detections of this level, exactly (GroupNorm statistics differentiated). ``chunk``
    predictions at a time (default: as many as :data:`EXACT_BUDGET` allows).

    Args:
        feat: (B, C, h, w) the level's FPN features (no grad needed; a leaf copy is made).
        det: the detections of this level (``labels``, ``loc``); batch_index: (N,) image.
        scale_factors: (B, 2) input / original per image.
        state: what :func:`record_tower_state` recorded in the forward that made ``feat``'s
            outputs: with it, plain FCOS towers (:func:`fast_window_support`) are
            back-propagated explicitly; without it (or for other heads), autograd.
    """
    explicit = state is not None and fast_window_support(head) is None
    if chunk is None:  # the explicit backward covers one image's map, autograd the batch's
        chunk = max(1, EXACT_BUDGET // (feat[:1] if explicit else feat).numel())
    if explicit:
        yield from _tower_grads_exact(head, feat, level, det, target, scale_factors,
                                      batch_index, state, chunk)
        return
    h, w = feat.shape[-2:]
    ys, xs = det.loc // w, det.loc % w
    b = batch_index
    with torch.enable_grad():  # only the forward records a graph (not the consumer's code)
        x = feat.detach().requires_grad_(True)
        cls, reg, factor = head.forward_single(x, head.scales[level], head.strides[level])
        factor_at = factor[b, 0, ys, xs] if factor is not None and _factor_conv(head) else None
        points = _points(head, level, ys, xs, feat)
        y = dense_attribute(head, target, cls[b, :, ys, xs], reg[b, :, ys, xs], factor_at,
                            det.labels, points, scale_factors[b].T)  # [N]
    eye = torch.eye(len(y), dtype=y.dtype, device=y.device)
    for start in range(0, len(y), chunk):
        idx = torch.arange(start, min(start + chunk, len(y)), device=y.device)
        g, = torch.autograd.grad(y, x, grad_outputs=eye[idx], is_grads_batched=True,
                                 retain_graph=True)  # [n, B, C, h, w]
        yield idx, g[torch.arange(len(idx)), b[idx]]


def _tower_grads_exact(head, feat, level, det, target, scale_factors, b, state, chunk):
    """:func:`dense_grads_exact` for plain FCOS towers: the final convs by autograd on 3x3
    windows (:func:`_final_conv_grads`), then the towers on the whole map, image by image
    (:func:`_tower_backward_exact`)."""
    h, w = feat.shape[-2:]
    ys, xs = det.loc // w, det.loc % w
    deltas = _final_conv_grads(head, level, det, target, scale_factors, b, state)
    for img in b.unique().tolist():
        for idx in (b == img).nonzero()[:, 0].split(chunk):
            grads = feat.new_zeros(len(idx), *feat.shape[1:])
            for tower, delta in zip((head.cls_convs, head.reg_convs), deltas):
                if delta is not None:
                    full = paste_windows(delta[idx], ys[idx], xs[idx], (h, w))
                    grads += _tower_backward_exact(tower, full, state, level, img)
            yield idx, grads


def _tower_backward_exact(tower, delta, state, level: int, img: int):
    """Back-propagate ``delta`` = dY/d(tower output), (n, C, h, w) on the whole map of image
    ``img``, down to the tower input with the forward's ReLU masks and the exact GroupNorm
    backward (``dx = rstd * (t - mean(t) - x_hat * mean(t * x_hat))`` per group,
    t = gamma * dy)."""
    n, c, h, w = delta.shape
    for m in reversed(list(tower)):
        scale = None  # what multiplies dy per position and channel: ReLU mask x gamma
        if getattr(m, 'with_activation', False):
            scale = (state['out'][m][level][img:img + 1] > 0).to(delta.dtype)
        norm = m.norm if getattr(m, 'with_norm', False) else None
        if norm is not None and norm.affine:
            gamma = norm.weight.to(delta.dtype)[:, None, None]
            scale = gamma if scale is None else scale * gamma
        if scale is not None:
            delta = delta * scale
        if norm is not None:
            mean, rstd, x = (t[img:img + 1] for t in state['gn'][norm][level])
            g = norm.num_groups
            x_hat = ((x.reshape(g, -1) - mean[0, :, None]) * rstd[0, :, None]).to(delta.dtype)
            t = delta.view(n, g, -1)  # [n, G, C / G * h * w]
            t_mean = t.mean(-1, keepdim=True)
            tx_mean = torch.einsum('ngm,gm->ng', t, x_hat)[..., None] / x_hat.shape[1]
            t.sub_(t_mean).sub_(x_hat * tx_mean).mul_(rstd[0, :, None].to(t.dtype))
        delta = F.conv_transpose2d(delta, m.conv.weight, padding=1)
    return delta


def _points(head, level: int, ys: torch.Tensor, xs: torch.Tensor, feat) -> torch.Tensor:
    """(N, 2) prior points (input pixels) of the given level locations."""
    pts = head.prior_generator.single_level_grid_priors(feat.shape[-2:], level,
                                                        dtype=feat.dtype, device=feat.device)
    return pts[ys * feat.shape[-1] + xs]


# ------------------------------------------------------------------------------ fast mode

def fast_window_support(head) -> str | None:
    """None if ``fast`` mode applies to this head, else the reason it does not."""
    for name in ('cls_convs', 'reg_convs', 'conv_cls', 'conv_reg'):
        if not hasattr(head, name):
            return f'{type(head).__name__} has no {name}'
    if len(head.cls_convs) != len(head.reg_convs):
        return 'cls and reg towers differ in depth'
    for m in list(head.cls_convs) + list(head.reg_convs):
        conv = getattr(m, 'conv', None)
        if type(conv) is not nn.Conv2d:
            return f'tower layer {type(conv).__name__} is not a plain Conv2d (e.g. DCN)'
        if not _is_same_3x3(conv):
            return 'tower convs are not 3x3, stride 1, padding 1, dilation 1, groups 1'
        if getattr(m, 'order', ('conv', 'norm', 'act')) != ('conv', 'norm', 'act'):
            return 'tower layer order is not conv-norm-act'
        norm = getattr(m, 'norm', None) if getattr(m, 'with_norm', False) else None
        if norm is not None and not isinstance(norm, nn.GroupNorm):
            return f'tower norm {type(norm).__name__} is not GroupNorm'
        act = getattr(m, 'activate', None) if getattr(m, 'with_activation', False) else None
        if act is not None and not isinstance(act, nn.ReLU):
            return f'tower activation {type(act).__name__} is not ReLU'
    for conv in (head.conv_cls, head.conv_reg, _factor_conv(head)):
        if conv is not None and (type(conv) is not nn.Conv2d or not _is_same_3x3(conv)):
            return 'final convs are not plain 3x3 convs'
    return None


def _is_same_3x3(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1)


@contextlib.contextmanager
def record_tower_state(head):
    """Record, per call (i.e. per level), what the fast backward needs from the full forward:
    ``state['gn'][gn_module]``: (mean, rstd), each (B, G), of the GroupNorm's input, and
    that input (B, C, h, w) (detached: the storage autograd keeps anyway in training);
    ``state['out'][tower_layer]``: the layer's output (B, C, h, w) (its ReLU mask)."""
    state, handles = {'gn': {}, 'out': {}}, []

    def gn_hook(module, args):
        x = args[0].detach()
        xg = x.reshape(x.shape[0], module.num_groups, -1).float()
        var, mean = torch.var_mean(xg, -1, unbiased=False)
        state['gn'].setdefault(module, []).append((mean, torch.rsqrt(var + module.eps), x))

    def out_hook(module, args, output):
        state['out'].setdefault(module, []).append(output.detach())

    try:
        for m in head.modules():
            if isinstance(m, nn.GroupNorm):
                handles.append(m.register_forward_pre_hook(gn_hook))
        for m in list(getattr(head, 'cls_convs', [])) + list(getattr(head, 'reg_convs', [])):
            handles.append(m.register_forward_hook(out_hook))
        yield state
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def frozen_group_norm_stats():
    """Inside, every ``nn.GroupNorm`` treats its mean and variance as constants (detached),
    so autograd gives the gradient that ``fast`` mode computes."""
    original = nn.GroupNorm.forward

    def forward(self, x):
        b = x.shape[0]
        xg = x.reshape(b, self.num_groups, -1)
        var, mean = torch.var_mean(xg.detach(), -1, unbiased=False, keepdim=True)
        y = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape_as(x)
        if self.affine:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    nn.GroupNorm.forward = forward
    try:
        yield
    finally:
        nn.GroupNorm.forward = original


def _tower_backward(tower, delta, state, level: int, b, ys, xs, hw):
    """Back-propagate ``delta`` = dY/d(tower output) on (n, C, k, k) windows down to the
    tower input, (n, C, k + 2 L, k + 2 L), with the forward's ReLU masks, GroupNorm
    statistics held constant, and positions off the map dropped (they are zero padding)."""
    h, w = hw
    for m in reversed(list(tower)):
        r = delta.shape[-1] // 2
        if getattr(m, 'with_activation', False):
            out, _ = gather_windows(state['out'][m][level], b, ys, xs, r)
            delta = delta * (out > 0)
        if getattr(m, 'with_norm', False):
            gn = m.norm
            rstd = state['gn'][gn][level][1]
            group = torch.arange(delta.shape[1], device=delta.device) // (
                delta.shape[1] // gn.num_groups)
            scale = rstd[b][:, group]  # [n, C]
            if gn.affine:
                scale = scale * gn.weight
            delta = delta * scale[:, :, None, None]
        delta = F.conv_transpose2d(delta, m.conv.weight)
        delta = delta * window_on_map(ys, xs, r + 1, (h, w))
    return delta


def window_radius(head) -> int:
    """Half-width of dY/dA's support: tower depth + the final conv."""
    return len(head.cls_convs) + 1


def window_on_map(ys: torch.Tensor, xs: torch.Tensor, radius: int, hw) -> torch.Tensor:
    """(n, 1, 2r+1, 2r+1) bool: which cells of the windows centred at (ys, xs) lie on an
    (h, w) map."""
    h, w = hw
    ar = torch.arange(-radius, radius + 1, device=ys.device)
    yy, xx = ys[:, None] + ar, xs[:, None] + ar  # [n, k]
    return (((yy >= 0) & (yy < h))[:, :, None] & ((xx >= 0) & (xx < w))[:, None, :])[:, None]


def gather_windows(feat: torch.Tensor, b: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                   radius: int):
    """Windows (n, C, 2r+1, 2r+1) of ``feat`` (B, C, h, w) centred at (ys, xs) of images b,
    zero outside the map, and the validity mask (n, 1, 2r+1, 2r+1)."""
    ar = torch.arange(0, 2 * radius + 1, device=feat.device)
    padded = F.pad(feat, (radius, radius, radius, radius))
    win = padded[b[:, None, None], :, (ys[:, None] + ar)[:, :, None],
                 (xs[:, None] + ar)[:, None, :]]
    valid = window_on_map(ys, xs, radius, feat.shape[-2:])
    return win.permute(0, 3, 1, 2), valid.to(feat.dtype)


def dense_grads_fast(head, feat: torch.Tensor, level: int, det: InstanceData, target: str,
                     scale_factors: torch.Tensor, batch_index: torch.Tensor, state: dict,
                     create_graph: bool = False):
    """dY/dA in the (2r+1)^2 window around each detection's location (all at once), with
    GroupNorm statistics held constant; ``state`` from :func:`record_tower_state`.

    The final convs and the attribute are differentiated by autograd on the towers' 3x3
    output windows; from there the gradient is propagated down the towers explicitly
    (:func:`_tower_backward`), reusing the forward's activations.

    Args:
        create_graph: record the gradient's graph to the head's weights (Odam-Train's
            second-order term); otherwise the gradient is a constant.
    Returns:
        grads (N, C, 2r+1, 2r+1) (zero off the map) and the windows of A (same shape, with
        ``feat``'s graph when grad mode is on), with r = :func:`window_radius`.
    """
    h, w = feat.shape[-2:]
    ys, xs, b = det.loc // w, det.loc % w, batch_index
    d_cls, d_reg = _final_conv_grads(head, level, det, target, scale_factors, b, state,
                                     create_graph)
    # the explicit backward multiplies by parameters: a graph only when asked for
    with torch.set_grad_enabled(create_graph):
        grads = 0
        for tower, delta in ((head.cls_convs, d_cls), (head.reg_convs, d_reg)):
            if delta is not None:
                grads = grads + _tower_backward(tower, delta, state, level, b, ys, xs, (h, w))
    win, _ = gather_windows(feat, b, ys, xs, window_radius(head))
    if not torch.is_tensor(grads):
        grads = torch.zeros_like(win)
    return grads, win


def _final_conv_grads(head, level: int, det: InstanceData, target: str,
                      scale_factors: torch.Tensor, b: torch.Tensor, state: dict,
                      create_graph: bool = False):
    """dY/d(cls tower output) and dY/d(reg tower output) on the (n, C, 3, 3) windows around
    each detection's location (None for a tower Y does not depend on), by autograd through
    the final convs and the attribute."""
    w = state['out'][head.cls_convs[-1]][level].shape[-1]
    ys, xs = det.loc // w, det.loc % w
    last = {name: state['out'][getattr(head, name)[-1]][level]
            for name in ('cls_convs', 'reg_convs')}
    with torch.enable_grad():
        cls_feat = gather_windows(last['cls_convs'], b, ys, xs, 1)[0].requires_grad_(True)
        reg_feat = gather_windows(last['reg_convs'], b, ys, xs, 1)[0].requires_grad_(True)
        cls = F.conv2d(cls_feat, head.conv_cls.weight, head.conv_cls.bias)[:, :, 0, 0]
        reg = _test_time_reg(head, F.conv2d(reg_feat, head.conv_reg.weight,
                                            head.conv_reg.bias)[:, :, 0, 0], level)
        factor = None
        conv = _factor_conv(head)
        if conv is not None:
            src = reg_feat if getattr(head, 'centerness_on_reg', False) else cls_feat
            factor = F.conv2d(src, conv.weight, conv.bias)[:, 0, 0, 0]
        points = _points(head, level, ys, xs, last['cls_convs'])
        y = dense_attribute(head, target, cls, reg, factor, det.labels, points,
                            scale_factors[b].T)
        return torch.autograd.grad(y.sum(), [cls_feat, reg_feat], allow_unused=True,
                                   create_graph=create_graph)


def paste_windows(maps: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                  hw: tuple[int, int]) -> torch.Tensor:
    """Place (N, ..., k, k) windows centred at (ys, xs) into (N, ..., h, w) zero maps
    (clipped at the borders)."""
    n, k = maps.shape[0], maps.shape[-1]
    r = k // 2
    h, w = hw
    flat = maps.reshape(-1, k, k)  # [N * M, k, k], M windows per detection
    rep = flat.shape[0] // n if n else 1
    ys, xs = ys.repeat_interleave(rep), xs.repeat_interleave(rep)
    canvas = maps.new_zeros(flat.shape[0], h + 2 * r, w + 2 * r)
    ar = torch.arange(k, device=maps.device)
    canvas[torch.arange(len(flat), device=maps.device)[:, None, None],
           (ys[:, None] + ar)[:, :, None], (xs[:, None] + ar)[:, None, :]] = flat
    return canvas[:, r:r + h, r:r + w].reshape(*maps.shape[:-2], h, w)


def smoothing_radius(sigma: torch.Tensor | None) -> int:
    """Cells a Gaussian of the largest sigma reaches (3 sigma), 0 without smoothing."""
    return 0 if sigma is None or sigma.numel() == 0 else int(math.ceil(3 * float(sigma.max())))
