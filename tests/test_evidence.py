"""The black-box explainers' evidence: mmdet's final detections, or every prediction before
score threshold and NMS ('candidates', through the adapter), against brute force."""
import pytest
import torch
from mmdet.structures.bbox import bbox_overlaps

from odamtrain.apis import explain_batch
from odamtrain.explain import DriseSettings, VpsSettings
from odamtrain.explain.evidence import evidence_fn
from odamtrain.structures import detection_evidence

from .zoo import (
    DENSE,
    DETR_ZOO,
    GROUNDING_ZOO,
    QUERY_RCNN,
    TWO_STAGE,
    build_zoo_detector,
    zoo_batch,
)


def test_candidates_of_fcos_are_every_location_and_class_by_hand():
    """FCOS: every location x class, score sigmoid(class) x sigmoid(centerness), box the
    point minus / plus the predicted distances (x stride at test time), in original pixels;
    the evidence of a target is the brute-force max of IoU x score over all of them."""
    model = build_zoo_detector('fcos')
    inputs, samples = zoo_batch(model)
    meta = samples[0].metainfo
    boxes, labels, scores = evidence_fn(model, meta, 'candidates')(inputs)[0]
    head = model.bbox_head
    with torch.no_grad():
        cls, reg, ctr = head(model.extract_feat(inputs))
    points = head.prior_generator.grid_priors([c.shape[-2:] for c in cls], device=inputs.device)
    want_boxes, want_scores = [], []
    for c, r, t, p in zip(cls, reg, ctr, points):
        s = c[0].permute(1, 2, 0).reshape(-1, c.shape[1]).sigmoid() * \
            t[0].permute(1, 2, 0).reshape(-1, 1).sigmoid()  # [n, K]
        d = r[0].permute(1, 2, 0).reshape(-1, 4)
        b = torch.cat([p - d[:, :2], p + d[:, 2:]], 1)
        b = b / b.new_tensor(meta['scale_factor']).repeat(2)
        want_boxes.append(b[:, None].expand(-1, s.shape[1], 4).reshape(-1, 4))
        want_scores.append(s.reshape(-1))
    want_boxes, want_scores = torch.cat(want_boxes), torch.cat(want_scores)
    assert len(scores) == len(want_scores) == sum(c[0, 0].numel() for c in cls) * 3
    target = want_boxes[want_scores.argmax()] + torch.tensor([3., -2., 4., 1.])
    for label in range(3):
        brute = (bbox_overlaps(target[None], want_boxes)[0] * want_scores
                 * (torch.arange(len(want_scores)) % 3 == label)).max()
        got = detection_evidence(boxes, labels, scores, target, label, 'vps')
        assert got == pytest.approx(float(brute), rel=1e-5)


@pytest.mark.parametrize('name', DENSE + TWO_STAGE + QUERY_RCNN + list(DETR_ZOO)
                         + list(GROUNDING_ZOO))
def test_every_detection_is_one_of_the_candidates(name):
    """NMS and score thresholds only remove: each final detection is a candidate with the
    same box, label and score (so 'candidates' never sees less than 'detections'); PAA's
    score voting and Grid R-CNN's grid head then move the boxes (not the scores), MS R-CNN
    rescores the kept ones."""
    model = build_zoo_detector(name)
    inputs, samples = zoo_batch(model)
    meta = samples[0].metainfo
    dets = evidence_fn(model, meta, 'detections')(inputs)[0]
    cands = evidence_fn(model, meta, 'candidates')(inputs)[0]
    assert len(cands[0]) >= len(dets[0]) > 0
    for box, label, score in zip(*dets):
        same = (cands[1] == label) & (cands[2] - score).abs().le(1e-5 * score + 1e-7)
        if name == 'ms-rcnn':  # mmdet rescores (mask IoU) only what its NMS keeps
            same = cands[1] == label
        assert same.any()
        if name not in ('paa', 'lad', 'grid-rcnn'):  # (voted / grid boxes)
            assert bbox_overlaps(box[None], cands[0][same])[0].max() > 0.999


def test_black_box_maps_take_either_evidence():
    model = build_zoo_detector('faster-rcnn')
    inputs, samples = zoo_batch(model)
    for evidence in ('detections', 'candidates'):
        det, = explain_batch(model, inputs, samples, method='drise', normalize=None,
                             drise=DriseSettings(num_masks=8, grid=4, batch_size=4,
                                                 evidence=evidence))
        assert det.heatmaps.shape[0] == len(det) and torch.isfinite(det.heatmaps).all()
        det, = explain_batch(model, inputs, samples[:1], method='vps', normalize=None,
                             vps=VpsSettings(regions=4, segmentation='grid', max_steps=1,
                                             evidence=evidence))
        assert det.heatmaps.shape[0] == len(det)
    with pytest.raises(ValueError, match="drise.evidence must be one of"):
        DriseSettings(evidence='priors')
