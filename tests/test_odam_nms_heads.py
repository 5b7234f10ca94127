"""Odam-NMS inside FCOS and Faster R-CNN: the NMS config picks mmdet's NMS or Odam-NMS."""
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


RCNN = 'configs/faster-rcnn_tiny_fpn_synthetic.py'


@pytest.mark.parametrize('seed', [0, 1])
def test_rcnn_limit_is_exactly_mmdet_nms(seed):
    """OdamRoIHead with T_l <= -1, T_h > 1 == mmdet's StandardRoIHead with NMS 0.5."""
    stock = build_detector(RCNN)
    odam = build_detector(RCNN, cfg_options={
        'model.roi_head.type': 'OdamRoIHead',
        'model.test_cfg.rcnn.nms': dict(type='odam_nms', iou_threshold=0.5, corr_low=-1.0,
                                        corr_high=1.01, keep_heatmaps=True)})
    odam.load_state_dict(stock.state_dict())
    inputs, samples = image_batch(stock, seed)
    want = stock.predict(inputs, samples)[0].pred_instances
    got = odam.predict(inputs, samples)[0].pred_instances
    assert len(want) > 5
    assert torch.equal(got.labels, want.labels)
    torch.testing.assert_close(got.scores, want.scores)
    torch.testing.assert_close(got.bboxes, want.bboxes)
    assert got.heatmaps.shape[0] == len(got) and got.heatmaps.shape[1] == 50
    default = build_detector(RCNN, cfg_options={
        'model.roi_head.type': 'OdamRoIHead',
        'model.test_cfg.rcnn.nms': dict(type='odam_nms', iou_threshold=0.5, corr_low=0.2,
                                        corr_high=0.8)})
    default.load_state_dict(stock.state_dict())
    res = default.predict(inputs, samples)[0].pred_instances
    assert len(res) > 0 and (res.scores[:-1] >= res.scores[1:]).all() and 'heatmaps' not in res


@pytest.mark.parametrize('detector', ['fcos', 'rcnn'])
def test_explaining_an_odam_nms_detector_explains_its_own_detections(detector):
    """explain_batch on a model whose test-time NMS is Odam-NMS explains exactly the
    detections that model.predict returns (not those of a plain NMS)."""
    from odamtrain.apis import explain_batch
    if detector == 'fcos':
        _, model = _pair(0.2, 0.8, num_classes=1)
    else:
        model = build_detector(RCNN, cfg_options={
            'model.roi_head.type': 'OdamRoIHead',
            'model.test_cfg.rcnn.nms': dict(type='odam_nms', iou_threshold=0.5,
                                            corr_low=0.2, corr_high=0.8)})
    inputs, samples = image_batch(model)
    want = model.predict(inputs, samples)[0].pred_instances
    got = explain_batch(model, inputs, samples)[0]
    assert len(want) > 3
    assert torch.equal(got.labels, want.labels)
    torch.testing.assert_close(got.scores, want.scores)
    torch.testing.assert_close(got.bboxes, want.bboxes)
    assert got.heatmaps.shape[0] == len(want) and got.heatmaps.amax((1, 2)).gt(0).any()


def test_switching_an_odam_nms_config_to_nms_from_the_command_line():
    """``--cfg-options model.test_cfg.nms.type=nms`` leaves corr_low / corr_high / map keys
    in the dict: the heads and the explainer drop them and run mmdet's NMS."""
    from odamtrain.apis import explain_batch
    stock, odam = _pair(0.2, 0.8, num_classes=1, mode='fast')
    odam.bbox_head.test_cfg.nms.type = 'nms'
    inputs, samples = image_batch(stock)
    want = stock.predict(inputs, samples)[0].pred_instances
    got = odam.predict(inputs, samples)[0].pred_instances
    assert torch.equal(got.scores, want.scores)
    torch.testing.assert_close(explain_batch(odam, inputs, samples)[0].bboxes, want.bboxes)
    rcnn_stock = build_detector(RCNN)
    rcnn = build_detector(RCNN, cfg_options={
        'model.roi_head.type': 'OdamRoIHead',
        'model.test_cfg.rcnn.nms': dict(type='nms', iou_threshold=0.5, corr_low=0.2,
                                        corr_high=0.8, map_size=50)})
    rcnn.load_state_dict(rcnn_stock.state_dict())
    want = rcnn_stock.predict(inputs, samples)[0].pred_instances
    got = rcnn.predict(inputs, samples)[0].pred_instances
    assert torch.equal(got.scores, want.scores)
    torch.testing.assert_close(explain_batch(rcnn, inputs, samples)[0].bboxes, want.bboxes)
