"""ODAM for two-stage detectors (the synthetic Faster R-CNN) against a per-detection
autograd loop with Y written out by hand, the FPN-level variant, the map geometry."""
import pytest
import torch

from odamtrain.apis import explain_batch
from odamtrain.explain import build_adapter
from odamtrain.explain.roi_gradients import fpn_rounds, roi_footprints, roi_fpn_grads, roi_grads

from .odam_fixtures import build_detector, image_batch


@pytest.fixture(scope='module')
def rcnn():
    return build_detector('configs/faster-rcnn_tiny_fpn_synthetic.py', num_classes=3)


def roi_forward(rcnn, inputs, samples, features='roi'):
    adapter = build_adapter(rcnn)
    with torch.no_grad():
        feats = rcnn.extract_feat(inputs)
        proposals = rcnn.rpn_head.predict(feats, samples, rescale=False)
    metas = [s.metainfo for s in samples]
    fwd = adapter.forward_rois(feats, proposals, metas, features)
    det, = adapter.predictions(fwd)
    return adapter, fwd, det


@pytest.fixture(scope='module')
def roi_setup(rcnn):
    inputs, samples = image_batch(rcnn)
    adapter, fwd, det = roi_forward(rcnn, inputs, samples)
    scale = inputs.new_tensor([samples[0].metainfo['scale_factor']])
    return rcnn, inputs, samples, adapter, fwd, det, scale


def oracle(bbox_head, feat, rois, r, c, target, scale):
    """dY/dA for one detection by plain autograd; Y written out independently
    (delta2bbox with mmdet's default stds 0.1, 0.1, 0.2, 0.2 and zero means)."""
    a = feat.detach().clone().requires_grad_(True)
    cls, reg = bbox_head(a)
    if target == 'score':
        y = cls[r].softmax(-1)[c]
    elif target == 'logit':
        y = cls[r, c]
    else:
        d = reg[r, 4 * c:4 * c + 4] * torch.tensor([0.1, 0.1, 0.2, 0.2])
        x1, y1, x2, y2 = rois[r, 1:]
        pw, ph = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 + pw * d[0], (y1 + y2) / 2 + ph * d[1]
        w, h = pw * torch.exp(d[2]), ph * torch.exp(d[3])
        y = {'x1': (cx - w / 2) / scale[0, 0], 'y1': (cy - h / 2) / scale[0, 1],
             'x2': (cx + w / 2) / scale[0, 0], 'y2': (cy + h / 2) / scale[0, 1]}[target]
    g, = torch.autograd.grad(y, a)
    return g


@pytest.mark.parametrize('target', ['score', 'logit', 'x1', 'y1', 'x2', 'y2'])
def test_one_backward_per_round_equals_per_detection_autograd(roi_setup, target):
    rcnn, inputs, samples, adapter, fwd, det, scale = roi_setup
    assert len(det) > 5
    assert len(det.roi.unique()) < len(det)  # several classes of one RoI: rounds are used
    got, = [read.grads for read in roi_grads(adapter, fwd, det, target)]
    feat, rois = fwd.feats[0], fwd.rois[0]
    for i in range(len(det)):
        full = oracle(rcnn.roi_head.bbox_head, feat, rois, int(det.roi[i]), int(det.labels[i]),
                      target, scale)
        # the head treats RoIs independently: only the detection's own RoI gets gradient
        others = torch.ones(len(full), dtype=torch.bool)
        others[det.roi[i]] = False
        assert full[others].abs().max() == 0
        torch.testing.assert_close(got[i], full[det.roi[i]], rtol=1e-4,
                                   atol=1e-6 * full.abs().max())


def test_detections_equal_mmdet_predict(roi_setup):
    rcnn, inputs, samples, *_ = roi_setup
    ref = rcnn.predict(inputs, samples)[0].pred_instances
    det, = explain_batch(rcnn, inputs, samples, normalize=None)
    assert torch.equal(det.bboxes, ref.bboxes) and torch.equal(det.labels, ref.labels)
    torch.testing.assert_close(det.scores, ref.scores)
    h, w = samples[0].ori_shape
    assert det.heatmaps.shape == (len(det), h, w) and (det.heatmaps >= 0).all()
    # each map lives inside the RoI its features were pooled from
    boxes = rois_in_original(roi_setup)
    for m, (x1, y1, x2, y2) in zip(det.heatmaps, boxes[det.roi]):
        ys, xs = m.nonzero(as_tuple=True)
        if len(ys):
            assert xs.min() >= x1.floor() - 1 and xs.max() <= x2.ceil() + 1
            assert ys.min() >= y1.floor() - 1 and ys.max() <= y2.ceil() + 1


def test_maps_at_a_smaller_size_are_the_image_maps_scaled(roi_setup):
    """map_size=50 (what Odam-NMS correlates): each RoI map lands in its box scaled to the
    small grid, i.e. it matches the image-size map shrunk to that grid."""
    rcnn, inputs, samples, *_ = roi_setup
    full, = explain_batch(rcnn, inputs, samples, target='logit', normalize=None)
    small, = explain_batch(rcnn, inputs, samples, target='logit', normalize=None, map_size=50)
    h, w = samples[0].ori_shape
    assert small.heatmaps.shape == (len(full), 50, round(w * 50 / h))
    shrunk = torch.nn.functional.interpolate(full.heatmaps[:, None],
                                             size=small.heatmaps.shape[-2:], mode='area')[:, 0]
    lit = full.heatmaps.flatten(1).amax(1) > 0
    assert lit.all() and (small.heatmaps.flatten(1).amax(1) > 0).all()
    cos = torch.nn.functional.cosine_similarity(shrunk.flatten(1), small.heatmaps.flatten(1))
    assert cos.min() > 0.9, cos


def rois_in_original(roi_setup):
    *_, fwd, _, scale = roi_setup
    return fwd.rois[0][:, 1:] / scale.repeat(1, 2)


def test_fpn_level_gradients_equal_per_detection_autograd(rcnn):
    """A = the RoI's FPN level through RoIAlign's backward: rounds of non-overlapping
    footprints give each detection exactly its own gradient."""
    inputs, samples = image_batch(rcnn, seed=1)
    adapter, fwd, det = roi_forward(rcnn, inputs, samples, 'fpn')
    levels, rois, cls = fwd.levels[:4], fwd.rois[0], fwd.cls_score
    got = {}
    for part, lvl, g in roi_fpn_grads(adapter, fwd, det, 'score'):
        for j, p in enumerate(part.tolist()):
            got[p] = (lvl, g[j])
    assert sorted(got) == list(range(len(det)))
    level, cells = roi_footprints(rcnn.roi_head.bbox_roi_extractor, rois[det.roi], 4)
    rounds = fpn_rounds(level, cells, det.roi)
    assert int(rounds.max()) + 1 < len(det)  # fewer backward passes than detections
    for p in range(len(det)):
        y = cls[det.roi[p]].softmax(-1)[det.labels[p]]
        truth = torch.autograd.grad(y, levels, retain_graph=True)
        lvl, g = got[p]
        for other in range(4):
            if other != lvl:
                assert truth[other].abs().max() == 0  # only the RoI's level is used
        torch.testing.assert_close(g, truth[lvl][0], rtol=1e-4,
                                   atol=1e-6 * truth[lvl].abs().max())


def test_fpn_rounds_hand_made():
    level = torch.tensor([0, 0, 0, 1])
    cells = torch.tensor([[0, 0, 4, 4], [5, 0, 9, 4], [3, 3, 6, 6], [0, 0, 4, 4.]])
    roi = torch.tensor([0, 1, 2, 0])
    # 0 and 1 are disjoint; 2 overlaps both; 3 is on another level but shares RoI 0
    assert fpn_rounds_list(level, cells, roi) == [0, 0, 1, 1]


def fpn_rounds_list(level, cells, roi):
    return fpn_rounds(level, cells, roi).tolist()
