"""ODAM for DETR-like detectors (DETR, Conditional DETR, DAB-DETR, Deformable DETR, DINO)
against one backward per query through mmdet's own transformer and post-processing."""
import pytest
import torch

from odamtrain.apis import explain_batch
from odamtrain.explain import build_adapter
from odamtrain.explain.detr_gradients import detr_grads
from odamtrain.explain.heatmap import odam_heatmap, resize_maps

from .zoo import DETR_ZOO, build_zoo_detector, zoo_batch

SIDES = ('x1', 'y1', 'x2', 'y2')


@pytest.fixture(scope='module', params=list(DETR_ZOO))
def detr(request):
    model = build_zoo_detector(request.param)
    inputs, samples = zoo_batch(model)
    return request.param, model, inputs, samples


def mmdet_graph(model, inputs, samples, features):
    """(leaves, the last layer's class outputs, mmdet's detections with their graph): the
    detector run by hand from leaf features (the backbone's stages or the neck's levels)."""
    with torch.no_grad():
        stages = model.backbone(inputs)
        neck = model.neck(stages)
    leaves = [x.detach().requires_grad_(True) for x in
              (stages if features == 'backbone' else neck)]
    captured = {}
    head = model.bbox_head
    original = type(head).predict_by_feat

    def capture(cls, boxes, batch_img_metas, rescale=True):
        captured['cls'] = cls  # (layers, B, Q, K): what mmdet's scores are read from
        return original(head, cls, boxes, batch_img_metas, rescale)

    head.predict_by_feat = capture
    try:
        with torch.enable_grad():
            feats = model.neck(tuple(leaves)) if features == 'backbone' else tuple(leaves)
            res = head.predict(**model.forward_transformer(feats, samples),
                               batch_data_samples=samples, rescale=True)
    finally:
        del head.predict_by_feat
    return leaves, captured['cls'], res


def oracle_value(cls, res, p, target):
    if target == 'score':
        return res.scores[p]
    if target in SIDES:
        return res.bboxes[p, SIDES.index(target)]
    g, = torch.autograd.grad(res.scores[p], cls, retain_graph=True)  # the logit it reads
    return cls.flatten()[g.abs().flatten().argmax()]


def test_detections_are_mmdets(detr):
    name, model, inputs, samples = detr
    with torch.no_grad():
        ref = model.predict(inputs, samples)[0].pred_instances
    det, = explain_batch(model, inputs, samples, normalize=None)
    assert len(ref) == 12 and torch.equal(det.labels, ref.labels)
    torch.testing.assert_close(det.bboxes, ref.bboxes)
    torch.testing.assert_close(det.scores, ref.scores)
    assert det.heatmaps.shape == (12, *samples[0].ori_shape) and det.heatmaps.min() >= 0


@pytest.mark.parametrize('target', ['score', 'logit', 'x1', 'y1', 'x2', 'y2'])
def test_batched_gradients_equal_one_backward_per_query(detr, target):
    """The vectorised backward (chunks of 5) == one backward per query through mmdet's own
    transformer, head and post-processing, on every level of A."""
    name, model, inputs, samples = detr
    adapter = build_adapter(model)
    features = adapter.check_features('auto')
    assert features == ('neck' if name in ('deformable-detr', 'dino') else 'backbone')
    fwd = adapter.forward(inputs, samples)
    det, = adapter.predictions(fwd)
    got = {}
    for idx, levels in detr_grads(adapter, fwd, det, target, chunk=5):
        for j, p in enumerate(idx.tolist()):
            got[p] = [g[j] for g in levels]
    assert sorted(got) == list(range(len(det)))
    leaves, cls, (res,) = mmdet_graph(model, inputs, samples, features)
    meta = samples[0].metainfo
    checked = 0
    for p in range(0, len(det), 2):  # every other query: 6 backward passes
        if target in SIDES:  # mmdet clips its boxes: compare where it did not
            v = float(res.bboxes[p, SIDES.index(target)])
            limit = meta['ori_shape'][1 - SIDES.index(target) % 2]
            if not 1 < v < limit - 1:
                continue
        with torch.enable_grad():
            y = oracle_value(cls, res, p, target)
        refs = torch.autograd.grad(y, leaves, retain_graph=True, allow_unused=True)
        for g, ref in zip(got[p], refs):
            ref = torch.zeros_like(g) if ref is None else ref[0]
            torch.testing.assert_close(g, ref, rtol=1e-4,
                                       atol=1e-5 * float(ref.abs().max()) + 1e-12)
        checked += 1
    assert checked > 0


def summed_level_maps(model, inputs, samples, target):
    """(levels of A, (N, H, W)): per detection the sum over A's levels of ReLU(sum_k g_k
    A_k), each resized to the image (Phi off)."""
    adapter = build_adapter(model)
    fwd = adapter.forward(inputs, samples)
    preds, = adapter.predictions(fwd)
    meta = samples[0].metainfo
    want = fwd.feats[0].new_zeros(len(preds), *meta['ori_shape'][:2])
    for idx, levels in detr_grads(adapter, fwd, preds, target):
        for g, a, stride in zip(levels, fwd.feats, fwd.strides):
            want[idx] += resize_maps(odam_heatmap(g, a.detach()[preds.img[idx]]), stride,
                                     meta['img_shape'][:2], meta['ori_shape'][:2])
    return len(fwd.feats), want


def test_maps_sum_the_levels_of_a(detr):
    """explain_batch's map (Phi off) == sum over A's levels of ReLU(sum_k g_k A_k), resized."""
    name, model, inputs, samples = detr
    det, = explain_batch(model, inputs, samples, smooth=None, normalize=None, target='y2')
    levels, want = summed_level_maps(model, inputs, samples, 'y2')
    assert levels == (4 if name in ('deformable-detr', 'dino') else 1)
    torch.testing.assert_close(det.heatmaps, want)


@pytest.mark.parametrize('name', ['detr', 'deformable-detr'])
def test_memory_features_split_back_into_levels(name):
    """features='memory': A = the encoder's output; its gradient == one backward per query
    w.r.t. the memory, reshaped level by level."""
    model = build_zoo_detector(name)
    inputs, samples = zoo_batch(model)
    adapter = build_adapter(model)
    fwd = adapter.forward(inputs, samples, 'memory')
    det, = adapter.predictions(fwd)
    assert len(fwd.leaves) == 1 and fwd.leaves[0].dim() == 3
    with torch.enable_grad():
        y = adapter.attribute('score', fwd, det)
    for idx, levels in detr_grads(adapter, fwd, det, 'score', chunk=4):
        for j, p in enumerate(idx.tolist()):
            ref, = torch.autograd.grad(y[p], fwd.leaves[0], retain_graph=True)
            start = 0
            for g, a in zip(levels, fwd.feats):
                _, c, h, w = a.shape
                want = ref[0, start:start + h * w].T.reshape(c, h, w)
                torch.testing.assert_close(g[j], want)
                start += h * w
    maps, = explain_batch(model, inputs, samples, features='memory')
    assert maps.heatmaps.shape == (len(det), *samples[0].ori_shape)


def test_targets_pick_the_best_query_and_class():
    model = build_zoo_detector('deformable-detr')
    inputs, samples = zoo_batch(model)
    plain, = explain_batch(model, inputs, samples, normalize=None)
    from mmengine.structures import InstanceData
    tgt = InstanceData(bboxes=plain.bboxes[:3], labels=plain.labels[:3])
    got, = explain_batch(model, inputs, samples, normalize=None, targets=[tgt])
    # a target that is a detection's own box is explained by that detection (same map)
    for k in range(3):
        same = (plain.query == got.query[k]) & (plain.labels == got.labels[k])
        assert same.any()
        torch.testing.assert_close(got.heatmaps[k], plain.heatmaps[same.nonzero()[0, 0]])


def test_no_hooks_or_capture_left_after_an_exception():
    model = build_zoo_detector('detr')
    inputs, samples = zoo_batch(model)
    grad_mode = torch.is_grad_enabled()

    def boom(*args, **kwargs):
        raise RuntimeError('boom')

    model.bbox_head.fc_cls.forward = boom
    try:
        with pytest.raises(RuntimeError, match='boom'):
            explain_batch(model, inputs, samples)
    finally:
        del model.bbox_head.fc_cls.forward
    assert 'predict_by_feat' not in vars(model.bbox_head)
    assert torch.is_grad_enabled() == grad_mode and model.training is False
    for m in model.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks


def test_odam_nms_and_odam_train_are_refused_for_set_prediction():
    from odamtrain.models import install_odam
    model = build_zoo_detector('dino')
    model.train_cfg = dict(odam_loss={})
    with pytest.raises(ValueError, match='DINOHead.*no NMS'):
        install_odam(model)
