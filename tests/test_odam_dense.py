"""ODAM for dense heads (FCOS) against a per-prediction autograd loop and hand-computed cases."""
import contextlib
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.dense_heads import FCOSHead
from mmengine.structures import InstanceData

from odamtrain.explain.dense import (
    TARGETS,
    dense_grads_exact,
    dense_grads_fast,
    fast_window_support,
    frozen_group_norm_stats,
    record_tower_state,
    window_radius,
)
from odamtrain.explain.dense_explainer import (
    EXACT_BELOW_WINDOWS,
    explain_dense_detector,
    level_heatmaps,
)
from odamtrain.explain.heatmap import box_sigma, odam_heatmap

from .odam_fixtures import build_detector, image_batch


@pytest.fixture(scope='module')
def fcos():
    return build_detector('configs/fcos_tiny_fpn_synthetic.py', num_classes=3)


def forward_random_batch(model, shape, seed):
    """FPN features of a random input batch and the head's recorded tower state."""
    inputs = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        with record_tower_state(model.bbox_head) as stats:
            model.bbox_head(feats)
    return feats, stats


@pytest.fixture(scope='module')
def setup(fcos):
    """FPN features of one 512x640 input (levels 64x80, 32x40, 16x20), GN statistics, and
    detections placed at every level: the four corners (borders), the centre and a random
    location, random classes."""
    head = fcos.bbox_head
    feats, stats = forward_random_batch(fcos, (1, 3, 512, 640), seed=1)
    g = torch.Generator().manual_seed(2)
    dets = []
    for level, f in enumerate(feats):
        h, w = f.shape[-2:]
        ys = torch.tensor([0, 0, h - 1, h - 1, h // 2, int(torch.randint(h, (1,), generator=g))])
        xs = torch.tensor([0, w - 1, 0, w - 1, w // 2, int(torch.randint(w, (1,), generator=g))])
        n = len(ys)
        centre = (torch.stack([xs, ys], 1).float() + 0.5) * head.strides[level]
        half = torch.rand(n, 2, generator=g) * 60 + 10
        dets.append(InstanceData(loc=ys * w + xs, labels=torch.randint(3, (n,), generator=g),
                                 img=torch.zeros(n, dtype=torch.long),
                                 bboxes=torch.cat([centre - half, centre + half], 1) / 0.8))
    scale = torch.tensor([[0.8, 0.8]])  # input / original
    return head, feats, stats, dets, scale


def oracle_grad(head, feat, level, y, x, label, target, scale, frozen):
    """dY/dA for one prediction by plain autograd; Y written out independently."""
    a = feat.detach().clone().requires_grad_(True)
    with frozen_group_norm_stats() if frozen else contextlib.nullcontext():
        cls, reg, ctr = head.forward_single(a, head.scales[level], head.strides[level])
    stride = head.strides[level]
    px, py = (x + 0.5) * stride, (y + 0.5) * stride  # FCOS point of location (y, x)
    values = {
        'logit': lambda: cls[0, label, y, x],
        'score': lambda: torch.sigmoid(cls[0, label, y, x]) * torch.sigmoid(ctr[0, 0, y, x]),
        'x1': lambda: (px - reg[0, 0, y, x]) / scale[0, 0],
        'y1': lambda: (py - reg[0, 1, y, x]) / scale[0, 1],
        'x2': lambda: (px + reg[0, 2, y, x]) / scale[0, 0],
        'y2': lambda: (py + reg[0, 3, y, x]) / scale[0, 1],
    }
    g, = torch.autograd.grad(values[target](), a)
    return g[0]


def paste(windows, ys, xs, hw):
    """(n, C, k, k) windows centred at (ys, xs) -> (n, C, h, w)."""
    n, c, k, _ = windows.shape
    r = k // 2
    full = windows.new_zeros(n, c, hw[0] + 2 * r, hw[1] + 2 * r)
    for i in range(n):
        full[i, :, ys[i]:ys[i] + k, xs[i]:xs[i] + k] = windows[i]
    return full[:, :, r:r + hw[0], r:r + hw[1]]


def cosine(a, b):
    """Row-wise cosine; two all-zero rows (e.g. a box side clamped at 0) count as equal."""
    a, b = a.flatten(1), b.flatten(1)
    both_zero = (a.abs().sum(1) == 0) & (b.abs().sum(1) == 0)
    return torch.where(both_zero, torch.ones_like(a[:, 0]), F.cosine_similarity(a, b, dim=1))


@pytest.mark.parametrize('target', TARGETS)
def test_exact_and_fast_equal_per_prediction_autograd(setup, target):
    head, feats, stats, dets, scale = setup
    for level, (feat, det) in enumerate(zip(feats, dets)):
        h, w = feat.shape[-2:]
        ys, xs = det.loc // w, det.loc % w
        truth = torch.stack([oracle_grad(head, feat, level, int(y), int(x), int(c), target,
                                         scale, False) for y, x, c in zip(ys, xs, det.labels)])
        frozen = torch.stack([oracle_grad(head, feat, level, int(y), int(x), int(c), target,
                                          scale, True) for y, x, c in zip(ys, xs, det.labels)])
        # explicit tower backward (with the recorded state) and autograd (without)
        for state in (stats, None):
            exact = torch.zeros_like(truth)
            for idx, g in dense_grads_exact(head, feat, level, det, target, scale, det.img,
                                            state, chunk=4):
                exact[idx] = g
            torch.testing.assert_close(exact, truth, rtol=1e-4,
                                       atol=1e-6 * truth.abs().max())
        windows, _ = dense_grads_fast(head, feat, level, det, target, scale, det.img, stats)
        fast = paste(windows, ys, xs, (h, w))
        # with GN statistics held constant the gradient lives in the window: fast is exact
        torch.testing.assert_close(fast, frozen, rtol=1e-4, atol=1e-6 * frozen.abs().max())
        if h * w < EXACT_BELOW_WINDOWS * (2 * window_radius(head) + 1) ** 2:
            continue  # fast mode computes this small level exactly
        # and the GN-statistics term it leaves out is small
        assert cosine(fast, truth).min() >= 0.99, (level, cosine(fast, truth))
        sigma = box_sigma(det.bboxes * 0.8, head.strides[level])
        maps_fast = odam_heatmap(fast, feat, sigma)
        maps_true = odam_heatmap(truth, feat, sigma)
        # maps: a prediction whose window is mostly off the map (a corner) has little local
        # energy, so the diffuse GN term weighs more there (docs/benchmarks.md has figures)
        assert cosine(maps_fast, maps_true).median() >= 0.99, (level, cosine(maps_fast,
                                                                              maps_true))


def test_exact_tower_backward_indexes_each_detections_own_image(fcos):
    """A batch of two images: the explicit exact backward (recorded per-image GN statistics
    and ReLU masks) equals batched autograd of the head for detections of both images."""
    head = fcos.bbox_head
    feats, stats = forward_random_batch(fcos, (2, 3, 256, 320), seed=3)
    g = torch.Generator().manual_seed(4)
    level, feat = 1, feats[1]
    h, w = feat.shape[-2:]
    n = 10
    det = InstanceData(loc=torch.randint(h * w, (n,), generator=g),
                       labels=torch.randint(3, (n,), generator=g),
                       img=torch.arange(n) % 2)
    scale = torch.tensor([[1.0, 1.0], [0.5, 0.5]])
    for target in ('score', 'x2'):
        explicit, autograd = (torch.zeros(n, *feat.shape[1:]) for _ in range(2))
        for state, out in ((stats, explicit), (None, autograd)):
            for idx, grads in dense_grads_exact(head, feat, level, det, target, scale, det.img,
                                                state, chunk=3):
                out[idx] = grads
        # (a box side clamped at 0 by FCOS's ReLU has no gradient)
        assert (autograd.abs().amax((1, 2, 3)) > 0).sum() >= n // 2
        torch.testing.assert_close(explicit, autograd, rtol=1e-4,
                                   atol=1e-6 * autograd.abs().max())


def test_level_heatmaps_fast_matches_full_map_computation(setup):
    """The windowed smoothing/pasting of fast mode equals smoothing the full-map gradient
    (frozen GN statistics)."""
    head, feats, stats, dets, scale = setup
    for level, (feat, det) in enumerate(zip(feats, dets)):
        h, w = feat.shape[-2:]
        ys, xs = det.loc // w, det.loc % w
        grads = torch.stack([oracle_grad(head, feat, level, int(y), int(x), int(c), 'score',
                                         scale, True) for y, x, c in zip(ys, xs, det.labels)])
        sigma = box_sigma(det.bboxes * 0.8, head.strides[level])
        expected = odam_heatmap(grads, feat, sigma)
        got = level_heatmaps(head, feat, level, det, 'odam', 'score', 'gaussian', 'fast', scale,
                             stats)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_batched_detector_equals_mmdet_predict(fcos):
    inputs, samples = image_batch(fcos)
    ref = fcos.predict(inputs, samples)
    dets = explain_dense_detector(fcos, inputs, samples, 'odam', 'score', 'gaussian', 'fast')
    for d, r in zip(dets, ref):
        assert len(d) > 0
        assert torch.equal(d.bboxes, r.pred_instances.bboxes)
        assert torch.equal(d.scores, r.pred_instances.scores)
        assert torch.equal(d.labels, r.pred_instances.labels)
        assert d.heatmaps.shape == (len(d), *r.ori_shape)
        assert (d.heatmaps >= 0).all() and d.heatmaps.flatten(1).amax(1).gt(0).all()


def test_hand_computed_toy_head():
    """1-channel head without norm: tower conv = identity (+ReLU), conv_cls = 3x3 of ones,
    centerness = 0. For the location (1, 1): logit = sum of ReLU(A) over its 3x3 window
    = 1 + 3 + 0.5 + 2 + 1 + 1 + 1 = 9.5, so d logit / dA = [A > 0] in the window and
    H = ReLU(grad * A) = the positive A of the window. For 'score' = sigmoid(logit) * 0.5,
    the gradient is scaled by 0.5 * s * (1 - s), s = sigmoid(9.5)."""
    head = FCOSHead(num_classes=1, in_channels=1, feat_channels=1, stacked_convs=1,
                    strides=[8], norm_cfg=None)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.cls_convs[0].conv.weight[0, 0, 1, 1] = 1.0
        head.conv_cls.weight.fill_(1.0)
    head.eval()
    assert fast_window_support(head) is None and window_radius(head) == 2
    a = torch.tensor([[1.0, -2, 3, 0], [0.5, 2, -1, 4], [1, 1, 1, 1], [-3, 2, 0, 1]])[None, None]
    det = InstanceData(loc=torch.tensor([1 * 4 + 1, 0 * 4 + 3]), labels=torch.tensor([0, 0]),
                       img=torch.tensor([0, 0]), bboxes=torch.zeros(2, 4))
    logit_map = torch.tensor([[[1, 0, 3, 0], [0.5, 2, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]],
                              [[0, 0, 3, 0], [0, 0, 0, 4], [0, 0, 0, 0], [0, 0, 0, 0]]])
    s = 1 / (1 + math.exp(-9.5))  # location (1, 1)
    s2 = 1 / (1 + math.exp(-7.0))  # location (0, 3): 3 + 4
    score_map = logit_map * torch.tensor([0.5 * s * (1 - s), 0.5 * s2 * (1 - s2)])[:, None, None]
    scale = torch.ones(1, 2)
    with torch.no_grad(), record_tower_state(head) as state:
        head.forward_single(a, head.scales[0], head.strides[0])
    for mode in ('fast', 'exact'):
        for target, expected in (('logit', logit_map), ('score', score_map)):
            got = level_heatmaps(head, a, 0, det, 'odam', target, None, mode, scale, state)
            torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-7)


def test_model_randomisation_changes_maps(fcos, setup):
    """Adebayo et al.'s sanity check: maps must depend on the weights being explained."""
    head, feats, stats, dets, scale = setup
    level, feat, det = 0, feats[0], dets[0]
    before = level_heatmaps(head, feat, level, det, 'odam', 'logit', 'gaussian', 'fast', scale,
                            stats)
    again = level_heatmaps(head, feat, level, det, 'odam', 'logit', 'gaussian', 'fast', scale,
                           stats)
    torch.testing.assert_close(before, again)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    try:
        torch.manual_seed(5)
        with torch.no_grad():
            for m in head.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.05)
        after = level_heatmaps(head, feat, level, det, 'odam', 'logit', 'gaussian', 'fast',
                               scale, stats)
    finally:
        head.load_state_dict(state)
    assert cosine(before, after).mean() < 0.8


def test_no_hooks_or_grad_mode_left_after_exception(fcos):
    head = fcos.bbox_head
    inputs, samples = image_batch(fcos)
    grad_mode = torch.is_grad_enabled()
    original_gn = nn.GroupNorm.forward
    with pytest.raises(ValueError, match='target'):
        explain_dense_detector(fcos, inputs, samples, 'odam', 'nonsense', None, 'fast')
    with pytest.raises(RuntimeError, match='boom'):
        with frozen_group_norm_stats():
            raise RuntimeError('boom')

    def boom(*args, **kwargs):
        raise RuntimeError('boom')

    head.forward, saved = boom, head.forward
    try:
        with pytest.raises(RuntimeError, match='boom'):
            explain_dense_detector(fcos, inputs, samples, 'odam', 'score', None, 'fast')
    finally:
        del head.forward
    assert head.forward == saved
    assert torch.is_grad_enabled() == grad_mode
    assert nn.GroupNorm.forward is original_gn
    for m in fcos.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks and not m._backward_hooks


@pytest.mark.parametrize('config', ['configs/fcos_tiny_fpn_synthetic.py',
                                    'configs/faster-rcnn_tiny_fpn_synthetic.py'])
def test_explain_detector_api(config, tmp_path):
    """mmdet-style API on a path and an array: DetDataSample with maps at the image size;
    nothing detected gives an empty (0, H, W) tensor."""
    import cv2
    from mmdet.structures import DetDataSample

    from odamtrain.apis import explain_detector

    from .odam_fixtures import scene
    model = build_detector(config)
    img = scene(3)
    path = str(tmp_path / 'img.jpg')
    cv2.imwrite(path, img)
    out = explain_detector(model, [path, img], method='odam', target='score', normalize='minmax')
    boxes = explain_detector(model, img, method='gradcampp', target='x2').pred_instances
    assert boxes.heatmaps.shape == (len(boxes), *img.shape[:2])
    for sample in out:
        assert isinstance(sample, DetDataSample)
        pred = sample.pred_instances
        assert len(pred) > 0 and pred.heatmaps.shape == (len(pred), *img.shape[:2])
        assert pred.heatmaps.dtype == torch.float32
        torch.testing.assert_close(pred.heatmaps.flatten(1).amax(1), torch.ones(len(pred)))
        assert pred.heatmaps.min() >= 0
    if 'rcnn' in model.test_cfg:  # maps on the RoI's FPN level instead of its RoI features
        fpn = explain_detector(model, img, rcnn_features='fpn').pred_instances
        assert torch.equal(fpn.bboxes, out[1].pred_instances.bboxes)
        assert fpn.heatmaps.shape == out[1].pred_instances.heatmaps.shape
        assert fpn.heatmaps.min() >= 0 and fpn.heatmaps.flatten(1).amax(1).gt(0).any()
    cfg = model.test_cfg.rcnn if 'rcnn' in model.test_cfg else model.test_cfg
    cfg.score_thr = 1.1
    try:
        empty = explain_detector(model, path).pred_instances
    finally:
        cfg.score_thr = 0.0
    assert empty.heatmaps.shape == (0, *img.shape[:2])


def test_unsupported_head_falls_back_to_exact_with_a_log_line(monkeypatch):
    """A tower layer that is not conv3x3-GN-ReLU (here a dilated conv) -> exact mode."""
    import odamtrain.explain.dense_explainer as explainer
    model = build_detector('configs/fcos_tiny_fpn_synthetic.py')
    conv = model.bbox_head.cls_convs[0].conv
    conv.dilation, conv.padding = (2, 2), (2, 2)
    assert 'not 3x3' in fast_window_support(model.bbox_head)
    inputs, samples = image_batch(model)
    logged = []
    monkeypatch.setattr(explainer, 'print_log', lambda msg, **kw: logged.append(msg))
    fast = explain_dense_detector(model, inputs, samples, 'odam', 'score', None, 'fast')[0]
    assert any('fast mode does not apply' in m and 'exact' in m for m in logged)
    exact = explain_dense_detector(model, inputs, samples, 'odam', 'score', None, 'exact')[0]
    torch.testing.assert_close(fast.heatmaps, exact.heatmaps)
    bn = FCOSHead(num_classes=1, in_channels=8, feat_channels=8, norm_cfg=dict(type='BN'))
    assert 'not GroupNorm' in fast_window_support(bn)


@pytest.mark.parametrize('config', ['mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
                                    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'])
def test_stock_mmdet_configs(config):
    """Stock mmdet models (80 classes; FCOS with exp box regression and centerness on the
    class tower) are explained, with detections identical to mmdet's predict."""
    from mmdet.registry import MODELS
    from mmengine.hub import get_config

    from odamtrain.apis import explain_batch
    cfg = get_config(config)
    cfg.model.backbone.init_cfg = None
    test_cfg = cfg.model.test_cfg.rcnn if 'rcnn' in cfg.model.test_cfg else cfg.model.test_cfg
    test_cfg.update(score_thr=0.0, max_per_img=15)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    model.cfg = cfg
    inputs, samples = image_batch(model)
    ref = model.predict(inputs, samples)[0].pred_instances
    det, = explain_batch(model, inputs, samples, target='x1')
    assert torch.equal(det.bboxes, ref.bboxes) and torch.equal(det.labels, ref.labels)
    assert det.heatmaps.shape == (len(ref), *samples[0].ori_shape)
