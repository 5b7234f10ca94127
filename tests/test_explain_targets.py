"""Explaining given targets (e.g. missed GT objects): the prediction chosen for each target
is the brute-force best (IoU x score of the target's class over every location / RoI and
class), and its map is the map the detector path gives that same prediction."""
import pytest
import torch
from mmengine.structures import InstanceData

from odamtrain.apis import explain_batch

from .odam_fixtures import build_detector, image_batch


def iou(a, b):
    """(4,) x (n, 4) -> (n,), written out."""
    w = (torch.minimum(a[2], b[:, 2]) - torch.maximum(a[0], b[:, 0])).clamp(min=0)
    h = (torch.minimum(a[3], b[:, 3]) - torch.maximum(a[1], b[:, 1])).clamp(min=0)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def targets_of(dets):
    """Three targets: two detections' boxes (class 0 and 2) and one grown by 4 pixels
    (class 1), which only partly overlaps any prediction."""
    grown = dets.bboxes[1] + dets.bboxes.new_tensor([-4., -4., 4., 4.])
    boxes = torch.stack([dets.bboxes[0], dets.bboxes[3], grown])
    return InstanceData(bboxes=boxes, labels=dets.labels.new_tensor([0, 2, 1]))


@pytest.fixture(scope='module')
def fcos():
    return build_detector('configs/fcos_tiny_fpn_synthetic.py', num_classes=3)


@pytest.fixture(scope='module')
def rcnn():
    return build_detector('configs/faster-rcnn_tiny_fpn_synthetic.py', num_classes=3)


def test_fcos_targets_pick_the_brute_force_best_prediction(fcos):
    inputs, samples = image_batch(fcos)
    head = fcos.bbox_head
    plain, = explain_batch(fcos, inputs, samples, method='odam', normalize=None)
    tgt = targets_of(plain)
    got, = explain_batch(fcos, inputs, samples, method='odam', normalize=None, targets=[tgt])
    # brute force: every level, location and class, FCOS's box and score written out
    meta = samples[0].metainfo
    scale = inputs.new_tensor(meta['scale_factor'] * 2)
    with torch.no_grad():
        cls, reg, ctr = head(fcos.extract_feat(inputs))
    cands = []
    for level, (c, r, t) in enumerate(zip(cls, reg, ctr)):
        h, w = c.shape[-2:]
        s = head.strides[level]
        ys, xs = torch.meshgrid(torch.arange(h, device=c.device),
                                torch.arange(w, device=c.device), indexing='ij')
        px, py = xs.flatten() * s + s // 2, ys.flatten() * s + s // 2  # mmdet's offset 0
        r = r[0].flatten(1)
        img_h, img_w = meta['img_shape']
        box = torch.stack([(px - r[0]).clamp(0, img_w), (py - r[1]).clamp(0, img_h),
                           (px + r[2]).clamp(0, img_w), (py + r[3]).clamp(0, img_h)], 1)
        score = c[0].flatten(1).sigmoid() * t[0].flatten(1).sigmoid()  # [K, h w]
        cands.append((level, box / scale, score))
    for k in range(len(tgt)):
        values = [iou(tgt.bboxes[k], box) * score[int(tgt.labels[k])]
                  for _, box, score in cands]
        value, level, loc = max((float(v.max()), level, int(v.argmax()))
                                for level, v in enumerate(values))
        assert value > 0
        assert (int(got.level[k]), int(got.prior[k])) == (level, loc), k
        assert int(got.labels[k]) == int(tgt.labels[k])
        torch.testing.assert_close(got.bboxes[k], cands[level][1][loc], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(got.scores[k], cands[level][2][tgt.labels[k], loc])
    # a target that is a detection's own box is explained by that detection, same map
    same = [(k, d) for k in range(len(tgt)) for d in range(len(plain))
            if (plain.level[d], plain.prior[d], plain.labels[d]) ==
            (got.level[k], got.prior[k], got.labels[k])]
    assert same
    for k, d in same:
        torch.testing.assert_close(got.heatmaps[k], plain.heatmaps[d])


def test_rcnn_targets_pick_the_brute_force_best_prediction(rcnn):
    inputs, samples = image_batch(rcnn)
    plain, = explain_batch(rcnn, inputs, samples, method='odam', normalize=None)
    tgt = targets_of(plain)
    got, = explain_batch(rcnn, inputs, samples, method='odam', normalize=None, targets=[tgt])
    # brute force over the RoIs and classes, from mmdet's own per-RoI boxes and scores
    roi_head = rcnn.roi_head
    meta = samples[0].metainfo
    with torch.no_grad():
        feats = rcnn.extract_feat(inputs)
        props = rcnn.rpn_head.predict(feats, samples, rescale=False)
        rois = torch.cat([props[0].bboxes.new_zeros(len(props[0]), 1), props[0].bboxes], 1)
        cls, reg = roi_head.bbox_head(roi_head.bbox_roi_extractor(feats[:4], rois))
        per = roi_head.bbox_head._predict_by_feat_single(rois, cls, reg, meta, rescale=True,
                                                         rcnn_test_cfg=None)
    boxes = per.bboxes.reshape(len(rois), -1, 4)
    for k in range(len(tgt)):
        c = int(tgt.labels[k])
        value = iou(tgt.bboxes[k], boxes[:, c]) * per.scores[:, c]
        r = int(value.argmax())
        assert int(got.roi[k]) == r and int(got.labels[k]) == c
        torch.testing.assert_close(got.bboxes[k], boxes[r, c])
        torch.testing.assert_close(got.scores[k], per.scores[r, c])
    same = [(k, d) for k in range(len(tgt)) for d in range(len(plain))
            if (plain.roi[d], plain.labels[d]) == (got.roi[k], got.labels[k])]
    assert same
    for k, d in same:
        torch.testing.assert_close(got.heatmaps[k], plain.heatmaps[d])


@pytest.mark.parametrize('method', ['drise', 'vps'])
def test_black_box_methods_explain_the_targets_themselves(fcos, method):
    inputs, samples = image_batch(fcos)
    # targets on the CPU (as a dataset gives them) whatever the model's device
    tgt = InstanceData(bboxes=torch.tensor([[10., 20., 60., 120.]]), labels=torch.tensor([1]))
    out, = explain_batch(fcos, inputs, samples, method=method, normalize=None, targets=[tgt],
                         drise=dict(num_masks=8), vps=dict(regions=4, max_steps=1))
    assert torch.equal(out.bboxes.cpu(), tgt.bboxes) and out.labels.tolist() == [1]
    assert out.scores.tolist() == [0] and out.heatmaps.shape == (1, *samples[0].ori_shape)
    with pytest.raises(ValueError, match='one InstanceData per image'):
        explain_batch(fcos, inputs, samples, method=method, targets=[tgt, tgt])
