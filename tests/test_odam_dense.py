"""ODAM for dense heads on the synthetic FCOS: fast vs exact on large levels, the batch's
image indexing, windowed smoothing, a hand-computed toy head, sanity checks."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.dense_heads import FCOSHead
from mmengine.structures import InstanceData

from odamtrain.explain import ExplanationSettings, build_adapter
from odamtrain.explain.adapters import FCOSAdapter
from odamtrain.explain.conv_towers import paste_windows
from odamtrain.explain.dense_gradients import (
    EXACT_BELOW_WINDOWS,
    DenseForward,
    dense_forward,
    exact_grads,
    level_maps,
    window_grads,
    window_radius,
)
from odamtrain.explain.heatmap import box_sigma, odam_heatmap

from .conftest import TEST_DEVICE
from .helpers.oracles import frozen_norm_stats
from .odam_fixtures import build_detector, image_batch

TARGETS = ('score', 'logit', 'x1', 'y1', 'x2', 'y2')


@pytest.fixture(scope='module')
def fcos():
    return build_detector('configs/fcos_tiny_fpn_synthetic.py', num_classes=3)


def random_forward(model, shape, seed) -> DenseForward:
    """The head's forward (towers recorded) on the FPN levels of a random input batch."""
    inputs = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(TEST_DEVICE)
    with torch.no_grad():
        return dense_forward(build_adapter(model), model.extract_feat(inputs), [])


@pytest.fixture(scope='module')
def setup(fcos):
    """One 512x640 input (levels 64x80, 32x40, 16x20) and predictions placed on every
    level: the four corners (borders), the centre and a random location, random classes."""
    adapter = build_adapter(fcos)
    fwd = random_forward(fcos, (1, 3, 512, 640), seed=1)
    g = torch.Generator().manual_seed(2)
    preds = []
    for level, f in enumerate(fwd.feats):
        h, w = f.shape[-2:]
        ys = torch.tensor([0, 0, h - 1, h - 1, h // 2, int(torch.randint(h, (1,), generator=g))])
        xs = torch.tensor([0, w - 1, 0, w - 1, w // 2, int(torch.randint(w, (1,), generator=g))])
        n = len(ys)
        centre = (torch.stack([xs, ys], 1).float() + 0.5) * fcos.bbox_head.strides[level]
        half = torch.rand(n, 2, generator=g) * 60 + 10
        preds.append(InstanceData(prior=ys * w + xs, labels=torch.randint(3, (n,), generator=g),
                                  img=torch.zeros(n, dtype=torch.long),
                                  level=torch.full((n,), level),
                                  bboxes=torch.cat([centre - half, centre + half], 1) / 0.8
                                  ).to(TEST_DEVICE))
    scale = torch.tensor([[0.8, 0.8]], device=TEST_DEVICE)  # input / original
    return adapter, fwd, preds, scale


def oracle_grad(head, feat, level, y, x, label, target, scale, frozen):
    """dY/dA for one prediction by plain autograd; Y written out independently."""
    a = feat.detach().clone().requires_grad_(True)
    with frozen_norm_stats() if frozen else torch.enable_grad():
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


def cosine(a, b):
    """Row-wise cosine; two all-zero rows (e.g. a box side clamped at 0) count as equal."""
    a, b = a.flatten(1), b.flatten(1)
    both_zero = (a.abs().sum(1) == 0) & (b.abs().sum(1) == 0)
    return torch.where(both_zero, torch.ones_like(a[:, 0]), F.cosine_similarity(a, b, dim=1))


def truth(head, fwd, level, preds, target, scale, frozen):
    h, w = fwd.feats[level].shape[-2:]
    ys, xs = preds.prior // w, preds.prior % w
    return torch.stack([oracle_grad(head, fwd.feats[level], level, int(y), int(x), int(c),
                                    target, scale, frozen)
                        for y, x, c in zip(ys, xs, preds.labels)])


@pytest.mark.parametrize('target', TARGETS)
def test_exact_and_fast_equal_per_prediction_autograd(fcos, setup, target):
    adapter, fwd, preds, scale = setup
    head = fcos.bbox_head
    for level, det in enumerate(preds):
        h, w = fwd.feats[level].shape[-2:]
        full = truth(head, fwd, level, det, target, scale, frozen=False)
        frozen = truth(head, fwd, level, det, target, scale, frozen=True)
        exact = torch.zeros_like(full)
        for idx, g in exact_grads(adapter, fwd, level, det, target, scale, chunk=4):
            exact[idx] = g
        torch.testing.assert_close(exact, full, rtol=1e-4, atol=1e-6 * full.abs().max())
        windows, _ = window_grads(adapter, fwd, level, det, target, scale)
        fast = paste_windows(windows, det.prior // w, det.prior % w, (h, w))
        # with GN statistics held constant the gradient lives in the window: fast is exact
        torch.testing.assert_close(fast, frozen, rtol=1e-4, atol=1e-6 * frozen.abs().max())
        if h * w < EXACT_BELOW_WINDOWS * (2 * window_radius(adapter, level) + 1) ** 2:
            continue  # fast mode computes this small level exactly
        # and the GN-statistics term it leaves out is small
        assert cosine(fast, full).min() >= 0.99, (level, cosine(fast, full))
        sigma = box_sigma(det.bboxes * 0.8, head.strides[level])
        maps_fast = odam_heatmap(fast, fwd.feats[level], sigma)
        maps_true = odam_heatmap(full, fwd.feats[level], sigma)
        # maps: a prediction whose window is mostly off the map (a corner) has little local
        # energy, so the diffuse GN term weighs more there (docs/benchmarks.md has figures)
        assert cosine(maps_fast, maps_true).median() >= 0.99, (level, cosine(maps_fast,
                                                                              maps_true))


def test_exact_tower_backward_indexes_each_predictions_own_image(fcos):
    """A batch of two images: the explicit exact backward (per-image GN statistics and
    activations) equals batched autograd of the head for predictions of both images."""
    adapter = build_adapter(fcos)
    fwd = random_forward(fcos, (2, 3, 256, 320), seed=3)
    plain = DenseForward(fwd.feats, fwd.outputs, [])  # no record: the autograd path
    g = torch.Generator().manual_seed(4)
    level = 1
    h, w = fwd.feats[level].shape[-2:]
    n = 10
    preds = InstanceData(prior=torch.randint(h * w, (n,), generator=g),
                         labels=torch.randint(3, (n,), generator=g), img=torch.arange(n) % 2,
                         level=torch.full((n,), level)).to(TEST_DEVICE)
    scale = torch.tensor([[1.0, 1.0], [0.5, 0.5]], device=TEST_DEVICE)
    for target in ('score', 'x2'):
        explicit, autograd = (fwd.feats[level].new_zeros(n, *fwd.feats[level].shape[1:])
                              for _ in range(2))
        for f, out in ((fwd, explicit), (plain, autograd)):
            for idx, grads in exact_grads(adapter, f, level, preds, target, scale, chunk=3):
                out[idx] = grads
        # (a box side clamped at 0 by FCOS's ReLU has no gradient)
        assert (autograd.abs().amax((1, 2, 3)) > 0).sum() >= n // 2
        torch.testing.assert_close(explicit, autograd, rtol=1e-4,
                                   atol=1e-6 * autograd.abs().max())


def test_windowed_smoothing_matches_full_map_computation(fcos, setup):
    """Fast mode's windowed smoothing and pasting == smoothing the full-map gradient
    (frozen GN statistics)."""
    adapter, fwd, preds, scale = setup
    for level, det in enumerate(preds):
        grads = truth(fcos.bbox_head, fwd, level, det, 'score', scale, frozen=True)
        sigma = box_sigma(det.bboxes * 0.8, fcos.bbox_head.strides[level])
        expected = odam_heatmap(grads, fwd.feats[level], sigma)
        got = level_maps(adapter, fwd, level, det, ExplanationSettings(), 'windows', scale)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * expected.max())


def fcos_attribute(head, outputs, y, x, label, target, scale, level):
    """Y of the prediction at (y, x) of one level's FCOS outputs, written out."""
    cls, reg, ctr = outputs
    px, py = (x + 0.5) * head.strides[level], (y + 0.5) * head.strides[level]
    if target == 'logit':
        return cls[0, label, y, x]
    if target == 'score':
        return torch.sigmoid(cls[0, label, y, x]) * torch.sigmoid(ctr[0, 0, y, x])
    if target == 'x1':
        return (px - reg[0, 0, y, x]) / scale[0, 0]
    return (py + reg[0, 3, y, x]) / scale[0, 1]  # 'y2'


def tower_truth(head, feat, level, preds, target, scale):
    """(dY/dT_cls, dY/dT_reg) (n, C, h, w) per prediction by plain autograd, T = the last
    conv of each tower's output, made a leaf by a forward hook."""
    h, w = feat.shape[-2:]
    leaves = []

    def leaf(module, args, output):
        leaves.append(output.detach().requires_grad_(True))
        return leaves[-1]

    grads = []
    for y, x, c in zip(preds.prior // w, preds.prior % w, preds.labels):
        leaves.clear()
        hooks = [head.cls_convs[-1].register_forward_hook(leaf),
                 head.reg_convs[-1].register_forward_hook(leaf)]
        try:
            with torch.enable_grad():
                outputs = head.forward_single(feat, head.scales[level], head.strides[level])
        finally:
            for hook in hooks:
                hook.remove()
        value = fcos_attribute(head, outputs, int(y), int(x), int(c), target, scale, level)
        grads.append(torch.autograd.grad(value, leaves, allow_unused=True))
    zero = torch.zeros_like(feat[0])
    towers = [torch.stack([zero if g[i] is None else g[i][0] for g in grads]) for i in (0, 1)]
    return towers, list(leaves)


@pytest.mark.parametrize('target', ['logit', 'score', 'x1', 'y2'])
def test_tower_features_equal_per_prediction_autograd(fcos, setup, target):
    """A = the towers' outputs ('towers'): the maps of every level, borders included, equal
    ODAM on the full maps of per-prediction autograd gradients w.r.t. both towers'
    outputs (Phi on, and off)."""
    adapter, fwd, preds, scale = setup
    head = fcos.bbox_head
    lit = 0  # maps with a positive cell (FCOS's ReLU clamps some random box sides at 0)
    for level, det in enumerate(preds):
        (g_cls, g_reg), (t_cls, t_reg) = tower_truth(head, fwd.feats[level], level, det,
                                                     target, scale)
        grads, feats = torch.cat([g_cls, g_reg], 1), torch.cat([t_cls, t_reg], 1)
        sigma = box_sigma(det.bboxes * 0.8, head.strides[level])
        for smooth, s in (('gaussian', sigma), (None, None)):
            expected = odam_heatmap(grads, feats, s)
            got = level_maps(adapter, fwd, level, det, ExplanationSettings(
                target=target, features='towers', smooth=smooth), 'windows', scale)
            lit += int(expected.amax((1, 2)).gt(0).sum())
            torch.testing.assert_close(got, expected, rtol=1e-4,
                                       atol=1e-6 * float(expected.max()))
    assert lit >= 8, (target, lit)


def test_tower_features_refused_without_window_towers():
    """'towers' on a head without conv towers in window form is one clear error."""
    adapter = build_adapter(build_detector('configs/fcos_tiny_fpn_synthetic.py', num_classes=3))
    adapter.check_features('towers')  # FCOS: accepted
    adapter.forward_impl = None  # as a family without a window form of its final layers
    with pytest.raises(ValueError, match="features='towers' needs the head's conv towers"):
        adapter.check_features('towers')


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
    adapter = FCOSAdapter(head)
    assert adapter.fast_support() is None and window_radius(adapter, 0) == 2
    a = torch.tensor([[1.0, -2, 3, 0], [0.5, 2, -1, 4], [1, 1, 1, 1], [-3, 2, 0, 1]])[None, None]
    det = InstanceData(prior=torch.tensor([1 * 4 + 1, 0 * 4 + 3]), labels=torch.tensor([0, 0]),
                       img=torch.tensor([0, 0]), level=torch.tensor([0, 0]),
                       bboxes=torch.zeros(2, 4))
    logit_map = torch.tensor([[[1, 0, 3, 0], [0.5, 2, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]],
                              [[0, 0, 3, 0], [0, 0, 0, 4], [0, 0, 0, 0], [0, 0, 0, 0]]])
    s = 1 / (1 + math.exp(-9.5))  # location (1, 1)
    s2 = 1 / (1 + math.exp(-7.0))  # location (0, 3): 3 + 4
    score_map = logit_map * torch.tensor([0.5 * s * (1 - s), 0.5 * s2 * (1 - s2)])[:, None, None]
    scale = torch.ones(1, 2)
    with torch.no_grad():
        fwd = dense_forward(adapter, [a], [])
    for mode in ('windows', 'exact'):
        for target, expected in (('logit', logit_map), ('score', score_map)):
            got = level_maps(adapter, fwd, 0, det, ExplanationSettings(target=target, smooth=None),
                             mode, scale)
            torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-7)


def test_model_randomisation_changes_maps(fcos, setup):
    """Adebayo et al.'s sanity check: maps must depend on the weights being explained."""
    adapter, fwd, preds, scale = setup
    args = (0, preds[0], ExplanationSettings(target='logit'), 'windows', scale)
    before = level_maps(adapter, fwd, *args)
    torch.testing.assert_close(before, level_maps(adapter, fwd, *args))
    state = {k: v.clone() for k, v in fcos.bbox_head.state_dict().items()}
    try:
        torch.manual_seed(5)
        with torch.no_grad():
            for m in fcos.bbox_head.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.05)
        with torch.no_grad():
            fresh = dense_forward(adapter, fwd.feats, [])
        after = level_maps(adapter, fresh, *args)
    finally:
        fcos.bbox_head.load_state_dict(state)
    assert cosine(before, after).mean() < 0.8


def test_no_hooks_or_grad_mode_left_after_exception(fcos):
    from odamtrain.apis import explain_batch
    head = fcos.bbox_head
    inputs, samples = image_batch(fcos)
    grad_mode = torch.is_grad_enabled()
    original_gn = nn.GroupNorm.forward
    with pytest.raises(ValueError, match='target'):
        explain_batch(fcos, inputs, samples, target='nonsense')
    with pytest.raises(RuntimeError, match='boom'):
        with frozen_norm_stats():
            raise RuntimeError('boom')

    def boom(*args, **kwargs):
        raise RuntimeError('boom')

    original = head.conv_cls.forward
    head.conv_cls.forward = boom  # fails inside the recorded forward
    try:
        with pytest.raises(RuntimeError, match='boom'):
            explain_batch(fcos, inputs, samples)
    finally:
        del head.conv_cls.forward
    assert head.conv_cls.forward == original
    assert torch.is_grad_enabled() == grad_mode and fcos.training is False
    assert nn.GroupNorm.forward is original_gn
    assert 'filter_scores_and_topk' not in vars(head) and '_bbox_post_process' not in vars(head)
    for m in fcos.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks and not m._backward_hooks
