"""The user-facing API against mmdet's own inference and a per-detection backward:
``explain_detector`` returns mmdet's detections of ``inference_detector`` and, for each, the
ODAM map of one autograd backward of that detection alone."""
import copy

import cv2
import numpy as np
import pytest
import torch
from mmdet.apis import inference_detector

from odamtrain.apis import explain_detector
from odamtrain.explain.heatmap import box_sigma, normalize_maps, odam_heatmap, resize_maps
from odamtrain.inference import prepare_batch, prepare_train_batch

from .odam_fixtures import build_detector, scene
from .zoo import build_zoo_detector


@pytest.fixture(scope='module')
def fcos():
    model = build_detector('configs/fcos_tiny_fpn_synthetic.py')
    model.bbox_head.test_cfg.score_thr = 0.0  # random init scores ~0.01
    model.bbox_head.test_cfg.max_per_img = 5
    return model


def test_explain_detector_returns_mmdets_detections_for_a_path_and_an_array(fcos, tmp_path):
    img = scene(3)
    path = str(tmp_path / 'scene.jpg')
    cv2.imwrite(path, img)
    results = explain_detector(fcos, [path, img], method='odam', normalize='minmax')
    assert isinstance(results, list) and len(results) == 2
    for source, res in zip([path, img], results):
        want = inference_detector(fcos, source).pred_instances
        got = res.pred_instances
        torch.testing.assert_close(got.bboxes, want.bboxes)
        torch.testing.assert_close(got.scores, want.scores)
        assert torch.equal(got.labels, want.labels)
        h, w = cv2.imread(path).shape[:2]
        assert got.heatmaps.shape == (len(want), h, w) and len(want) == 5
        peaks = got.heatmaps.amax((1, 2))
        assert ((peaks - 1).abs() < 1e-6).all() and (got.heatmaps >= 0).all()
    single = explain_detector(fcos, img, method='odam', normalize='minmax')
    torch.testing.assert_close(single.pred_instances.heatmaps,
                               results[1].pred_instances.heatmaps)


def test_explain_detector_maps_equal_one_backward_per_detection(fcos):
    """Oracle: for each detection alone, autograd of its score w.r.t. its FPN level through
    mmdet's own head forward, then H = ReLU(sum_k Phi(dY/dA_k) A_k) resized to the image."""
    img = scene(4)
    res = explain_detector(fcos, img, method='odam', target='score', normalize=None,
                           mode='exact').pred_instances
    inputs, samples = prepare_batch(fcos, img)
    meta = samples[0].metainfo
    with torch.no_grad():
        feats = [f.detach().requires_grad_(True) for f in fcos.extract_feat(inputs)]
    with torch.enable_grad():
        cls, reg, ctr = fcos.bbox_head(feats)
    assert len(res) == 5
    scale = inputs.new_tensor(meta['scale_factor']).repeat(2)
    for k in range(len(res)):
        level, prior, label = int(res.level[k]), int(res.prior[k]), int(res.labels[k])
        hw = cls[level].shape[-2:]
        y, x = prior // hw[1], prior % hw[1]
        score = (cls[level][0, label, y, x].sigmoid() * ctr[level][0, 0, y, x].sigmoid())
        torch.testing.assert_close(score.detach(), res.scores[k])
        grad, = torch.autograd.grad(score, feats[level], retain_graph=True)
        box = res.bboxes[k] * scale  # on the network input
        stride = fcos.bbox_head.prior_generator.strides[level][0]
        sigma = box_sigma(box[None], stride, max_sigma=max(hw))
        hm = odam_heatmap(grad, feats[level].detach(), sigma)
        want = resize_maps(hm, stride, meta['img_shape'][:2], meta['ori_shape'][:2])[0]
        torch.testing.assert_close(res.heatmaps[k], want, rtol=1e-4, atol=1e-6)
    assert normalize_maps(res.heatmaps, 'minmax').amax((1, 2)).allclose(torch.ones(5))
    assert np.isfinite(res.heatmaps.numpy()).all()


def test_preparing_arrays_leaves_the_models_config_alone():
    """prepare_batch and prepare_train_batch on arrays edit their own copy of the test
    pipeline, so mmdet's inference_detector still finds model.cfg as it was."""
    model = build_zoo_detector('retinanet')
    before = copy.deepcopy(model.cfg.test_dataloader.dataset.pipeline)
    img = np.zeros((150, 190, 3), np.uint8)
    prepare_batch(model, img)
    prepare_train_batch(model, [img], [np.array([[10., 20., 60., 90.]])])
    assert model.cfg.test_dataloader.dataset.pipeline == before
    assert len(inference_detector(model, img).pred_instances) > 0
