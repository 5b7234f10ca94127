"""Odam-NMS inside every covered head, switched on from the config: at its limit it is
mmdet's own NMS for that head; a detector using it is explained by its own detections."""
import copy

import pytest
import torch

from odamtrain.apis import explain_batch
from odamtrain.models import install_odam

from .odam_fixtures import build_detector, image_batch
from .zoo import DENSE, TWO_STAGE, build_zoo_detector, zoo_batch

CONFIG = 'configs/fcos_tiny_fpn_synthetic.py'
RCNN = 'configs/faster-rcnn_tiny_fpn_synthetic.py'


def with_odam_nms(model, corr_low, corr_high, **nms):
    """A copy of ``model`` (same weights) whose test-time NMS is Odam-NMS at the head's own
    IoU threshold, installed as OdamRunner does."""
    odam = copy.deepcopy(model)
    head = odam.roi_head if hasattr(odam, 'roi_head') else odam.bbox_head
    iou = head.test_cfg.get('nms', {}).get('iou_threshold', 0.5)
    head.test_cfg.nms = dict(type='odam_nms', iou_threshold=iou, corr_low=corr_low,
                             corr_high=corr_high, **nms)
    return install_odam(odam)


# (RTMDet-Ins and CondInst make masks of what their NMS keeps, CenterNet has no NMS, PAA
# votes after it, Grid R-CNN's grid head refines what it keeps, CrowdDet's set NMS is its
# own: Odam-NMS is refused for them, below)
WITH_NMS = [n for n in DENSE + TWO_STAGE
            if n not in ('rtmdet-ins', 'condinst', 'centernet', 'paa', 'paa-novote', 'lad',
                         'grid-rcnn', 'crowddet-rcnn', 'crowddet-refine-rcnn')]


@pytest.mark.parametrize('name', WITH_NMS)
@pytest.mark.parametrize('rescale', [True, False])
def test_limit_is_exactly_mmdet_nms_for_every_family(name, rescale):
    """T_l <= -1 and T_h > 1: Odam-NMS keeps exactly what mmdet's NMS keeps."""
    stock = build_zoo_detector(name)
    odam = with_odam_nms(stock, -1.0, 1.01)
    assert type(odam.roi_head if name in TWO_STAGE else odam.bbox_head).__name__.startswith('Odam')
    inputs, samples = zoo_batch(stock)
    with torch.no_grad():
        want = stock.predict(inputs, samples, rescale=rescale)[0].pred_instances
        got = odam.predict(inputs, samples, rescale=rescale)[0].pred_instances
    assert len(want) > 1
    assert torch.equal(got.labels, want.labels)
    torch.testing.assert_close(got.scores, want.scores)
    torch.testing.assert_close(got.bboxes, want.bboxes, rtol=0, atol=1e-4)
    assert set(got.keys()) == set(want.keys())  # no extra fields leak into the results


@pytest.mark.parametrize('name, why', [('rtmdet-ins', 'RTMDetInsSepBNHead: .*masks of the kept'),
                                       ('condinst', 'CondInstBboxHead: .*dynamic parameters'),
                                       ('centernet', 'CenterNetHead: .*no NMS'),
                                       ('paa', 'PAAHead: .*score voting'),
                                       ('crowddet-rcnn', 'MultiInstanceRoIHead: .*set NMS'),
                                       ('grid-rcnn', 'GridRoIHead: .*grid head refines'),
                                       ('sparse-rcnn', 'SparseRoIHead: .*set predictions')])
def test_odam_nms_is_refused_where_the_nms_feeds_more_than_boxes(name, why):
    with pytest.raises(ValueError, match=why):
        with_odam_nms(build_zoo_detector(name), 0.2, 0.8)


def test_never_suppressing_keeps_all_candidates_by_score():
    stock = build_detector(CONFIG, num_classes=3)
    odam = with_odam_nms(stock, 2.0, 2.0, keep_heatmaps=True)
    stock.bbox_head.test_cfg.nms = dict(type='nms', iou_threshold=1.0)  # keeps everything
    inputs, samples = image_batch(stock)
    want = stock.predict(inputs, samples)[0].pred_instances
    got = odam.predict(inputs, samples)[0].pred_instances
    assert torch.equal(got.scores, want.scores) and torch.equal(got.labels, want.labels)
    h, w = samples[0].ori_shape
    assert got.heatmaps.shape == (len(got), 50, round(w * 50 / h))  # short edge 50
    assert (got.heatmaps >= 0).all() and got.heatmaps.flatten(1).amax(1).gt(0).any()


@pytest.mark.parametrize('config', [CONFIG, RCNN])
def test_default_thresholds_run_in_the_detector(config):
    stock = build_detector(config, num_classes=3)
    odam = with_odam_nms(stock, 0.2, 0.8)
    inputs, samples = image_batch(stock)
    got = odam.predict(inputs, samples)[0].pred_instances
    want = stock.predict(inputs, samples)[0].pred_instances
    assert 0 < len(got) and (got.scores[:-1] >= got.scores[1:]).all()
    assert 'heatmaps' not in got
    # the same candidates reach the operator: the top detection survives either NMS
    torch.testing.assert_close(got.bboxes[0], want.bboxes[0])


@pytest.mark.parametrize('name', ['retinanet', 'gfl', 'yolox', 'faster-rcnn', 'cascade-rcnn'])
def test_explaining_an_odam_nms_detector_explains_its_own_detections(name):
    """explain_batch on a model whose test-time NMS is Odam-NMS explains exactly the
    detections that model.predict returns (not those of a plain NMS)."""
    model = with_odam_nms(build_zoo_detector(name), 0.2, 0.8)
    inputs, samples = zoo_batch(model)
    want = model.predict(inputs, samples)[0].pred_instances
    got = explain_batch(model, inputs, samples)[0]
    assert len(want) > 1
    assert torch.equal(got.labels, want.labels)
    torch.testing.assert_close(got.scores, want.scores)
    torch.testing.assert_close(got.bboxes, want.bboxes)
    assert got.heatmaps.shape[0] == len(want) and got.heatmaps.amax((1, 2)).gt(0).any()


@pytest.mark.parametrize('config', [CONFIG, RCNN])
def test_switching_an_odam_nms_config_to_nms_from_the_command_line(config):
    """``--cfg-options model.test_cfg.nms.type=nms`` leaves corr_low / corr_high / map keys
    in the dict: the heads and the explainer drop them and run mmdet's NMS."""
    stock = build_detector(config, num_classes=1)
    odam = with_odam_nms(stock, 0.2, 0.8, mode='fast', map_size=50)
    head = odam.roi_head if hasattr(odam, 'roi_head') else odam.bbox_head
    head.test_cfg.nms.type = 'nms'
    inputs, samples = image_batch(stock)
    want = stock.predict(inputs, samples)[0].pred_instances
    got = odam.predict(inputs, samples)[0].pred_instances
    assert torch.equal(got.scores, want.scores)
    torch.testing.assert_close(explain_batch(odam, inputs, samples)[0].bboxes, want.bboxes)


def test_the_configs_switch_it_on_through_the_runner():
    """odamtrain's *_odam_* configs ask for Odam-NMS and Odam-Train in train_cfg / test_cfg;
    the model OdamRunner builds has the Odam subclass of mmdet's own head."""
    from mmdet.models.dense_heads import FCOSHead
    from mmdet.models.roi_heads import StandardRoIHead
    for config, attr, base in (('configs/fcos_odam_tiny_fpn_synthetic.py', 'bbox_head',
                                FCOSHead),
                               ('configs/faster-rcnn_odam_tiny_fpn_synthetic.py', 'roi_head',
                                StandardRoIHead)):
        head = getattr(build_detector(config), attr)
        assert isinstance(head, base) and type(head).__name__ == f'Odam{base.__name__}'
        assert head.odam_loss.loss_weight == (0.5 if attr == 'bbox_head' else 0.2)


def test_tower_maps_are_what_odam_nms_compares():
    """``features='towers'`` in the NMS config: the maps Odam-NMS kept with its detections
    are ODAM maps of the class logit with A = the towers' outputs, as the explainer makes
    them for those detections (short edge 50, not normalised); they differ from the FPN
    level's maps."""
    stock = build_detector(CONFIG, num_classes=3)
    inputs, samples = image_batch(stock)
    maps = {}
    for features in ('towers', 'auto'):
        odam = with_odam_nms(stock, 0.2, 0.8, features=features, keep_heatmaps=True)
        got = odam.predict(inputs, samples)[0].pred_instances
        assert len(got) > 1
        want = explain_batch(odam, inputs, samples, target='logit', map_size=50,
                             normalize=None, features=features)[0]
        torch.testing.assert_close(got.bboxes, want.bboxes)
        torch.testing.assert_close(got.heatmaps, want.heatmaps, rtol=1e-4,
                                   atol=1e-6 * float(want.heatmaps.max()))
        maps[features] = got.heatmaps
    if maps['towers'].shape == maps['auto'].shape:
        assert not torch.allclose(maps['towers'], maps['auto'])


def test_map_score_threshold_in_the_detector():
    """``map_score_thr``: the detections scoring >= it are Odam-NMS's, with the same maps;
    the kept ones below it get their maps too (``keep_heatmaps``), the same maps."""
    stock = build_detector(CONFIG, num_classes=3)
    inputs, samples = image_batch(stock)
    full = with_odam_nms(stock, 0.2, 0.8, keep_heatmaps=True).predict(
        inputs, samples)[0].pred_instances
    thr = float(full.scores.median())
    part = with_odam_nms(stock, 0.2, 0.8, keep_heatmaps=True, map_score_thr=thr).predict(
        inputs, samples)[0].pred_instances
    above = int((full.scores >= thr).sum())
    assert 0 < above < len(full) and int((part.scores >= thr).sum()) == above
    for key in ('bboxes', 'scores', 'labels', 'heatmaps'):
        torch.testing.assert_close(part[key][:above], full[key][:above])
    low = part[above:]
    assert len(low) and low.heatmaps.amax((1, 2)).gt(0).all()
    for box, heatmap in zip(low.bboxes, low.heatmaps):  # the same detection, the same map
        same = (full.bboxes == box).all(1).nonzero()[:, 0]
        if len(same):
            torch.testing.assert_close(heatmap, full.heatmaps[same[0]])


@pytest.mark.parametrize('config, extra, why', [
    (CONFIG, dict(map_score_threshold=0.1), r"unknown keys \['map_score_threshold'\]"),
    (CONFIG, dict(split_thr=10000), r"unknown keys \['split_thr'\]"),
    (CONFIG, dict(map_score_thr='0.1'), "map_score_thr must be a number, got '0.1'"),
    (CONFIG, dict(mode='fastest'), "mode must be one of"),
    (RCNN, dict(features='towers'), "features must be one of"),
])
def test_a_bad_odam_nms_config_is_refused_when_the_model_is_built(config, extra, why):
    """A typo or a wrong value in ``test_cfg.nms`` is one error naming the detector, the key
    and what is expected, when the model is built (not a TypeError at its first predict)."""
    with pytest.raises(ValueError, match=f'with .*Head: test_cfg.nms: .*{why}'):
        with_odam_nms(build_detector(config, num_classes=3), 0.2, 0.8, **extra)
