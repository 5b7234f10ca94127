"""Odam-NMS inside FCOS: test_cfg.nms switches between mmdet's NMS and Odam-NMS."""
import pytest
import torch

from .odam_fixtures import build_detector, image_batch

CONFIG = 'configs/fcos_tiny_fpn_synthetic.py'


def _pair(corr_low, corr_high, num_classes=3, **nms):
    """The same random weights as stock FCOSHead (NMS 0.5) and as OdamFCOSHead."""
    stock = build_detector(CONFIG, num_classes=num_classes)
    odam = build_detector(CONFIG, num_classes=num_classes, cfg_options={
        'model.bbox_head.type': 'OdamFCOSHead',
        'model.test_cfg.nms': dict(type='odam_nms', iou_threshold=0.5, corr_low=corr_low,
                                   corr_high=corr_high, **nms)})
    odam.load_state_dict(stock.state_dict())
    return stock, odam


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('rescale', [True, False])
def test_limit_is_exactly_mmdet_nms(seed, rescale):
    stock, odam = _pair(-1.0, 1.01)
    inputs, samples = image_batch(stock, seed)
    want = stock.bbox_head.predict(stock.extract_feat(inputs), samples, rescale=rescale)[0]
    got = odam.bbox_head.predict(odam.extract_feat(inputs), samples, rescale=rescale)[0]
    assert len(want) > 5
    assert torch.equal(got.labels, want.labels) and torch.equal(got.scores, want.scores)
    torch.testing.assert_close(got.bboxes, want.bboxes)
    assert set(got.keys()) == set(want.keys())  # no extra fields leak into the results


def test_never_suppressing_keeps_all_candidates_by_score():
    stock, odam = _pair(2.0, 2.0, keep_heatmaps=True)
    stock.bbox_head.test_cfg.nms = dict(type='nms', iou_threshold=1.0)  # keeps everything
    inputs, samples = image_batch(stock)
    want = stock.predict(inputs, samples)[0].pred_instances
    got = odam.predict(inputs, samples)[0].pred_instances
    assert torch.equal(got.scores, want.scores) and torch.equal(got.labels, want.labels)
    h, w = samples[0].ori_shape
    assert got.heatmaps.shape == (len(got), 50, round(w * 50 / h))  # short edge 50
    assert (got.heatmaps >= 0).all() and got.heatmaps.flatten(1).amax(1).gt(0).any()


def test_default_thresholds_run_in_the_detector():
    stock, odam = _pair(0.2, 0.8)
    inputs, samples = image_batch(stock)
    got = odam.predict(inputs, samples)[0].pred_instances
    want = stock.predict(inputs, samples)[0].pred_instances
    assert 0 < len(got) and (got.scores[:-1] >= got.scores[1:]).all()
    assert 'heatmaps' not in got
    # the same candidates reach the operator: the top detection survives either NMS
    torch.testing.assert_close(got.bboxes[0], want.bboxes[0])
