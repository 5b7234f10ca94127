"""D-HSIC against its definition computed by brute force, and on toy detectors whose answer
is known."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from odamtrain.explain import DhsicSettings, ExplanationSettings
from odamtrain.explain.dhsic import dhsic_saliency, hsic_designs, hsic_scores

HW = (48, 64)
REGION = (slice(12, 24), slice(32, 48))  # what the toy detector looks at: one cell of 4 x 4
BOX = torch.tensor([[32., 12., 48., 24.]])


def region_detector(masked):
    """One detection on BOX whose score is the mean of the (masked) image over REGION."""
    return [(BOX, torch.tensor([0]), x[:, REGION[0], REGION[1]].mean().reshape(1))
            for x in masked]


def brute_force_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """xplique's HsicEstimator with the binary input kernel, written out: K_ab = 1 + (0.5 -
    (x_a - x_b)^2), L_ab = exp(-(y_a - y_b)^2 / (2 median(y)^2)), H = I - 1/p,
    sum(HKH * (HLH)^T) / p."""
    p = len(x)
    width = np.median(y)
    k = np.array([[1 + 0.5 - (x[a] - x[b]) ** 2 for b in range(p)] for a in range(p)])
    lk = np.array([[np.exp(-(y[a] - y[b]) ** 2 / (2 * width ** 2)) for b in range(p)]
                   for a in range(p)])
    h = np.eye(p) - 1.0 / p
    return float(((h @ k @ h) * (h @ lk @ h).T).sum() / p)


def test_scores_equal_the_estimator_written_out():
    g = torch.Generator().manual_seed(0)
    designs = (torch.rand(23, 6, generator=g) < 0.5).float()
    outputs = torch.rand(23, 2, generator=g, dtype=torch.float64) + 0.1
    got = hsic_scores(designs, outputs)
    assert got.shape == (2, 6)
    for t in range(2):
        for i in range(6):
            want = brute_force_hsic(designs[:, i].numpy(), outputs[:, t].numpy())
            assert got[t, i].item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_dependent_cell_scores_highest_and_degenerate_outputs():
    g = torch.Generator().manual_seed(1)
    designs = (torch.rand(200, 5, generator=g) < 0.5).float()
    y = designs[:, 2] * 0.8 + 0.1 * torch.rand(200, generator=g)  # depends on cell 2 only
    scores = hsic_scores(designs, y[:, None])[0]
    assert int(scores.argmax()) == 2 and scores[2] > 10 * scores[[0, 1, 3, 4]].max()
    # median 0 (the target lost in most images): the pairwise-distance width, finite
    sparse = designs[:, 2] * designs[:, 3] * 0.7  # found in ~1/4 of the images
    scores = hsic_scores(designs, sparse[:, None])[0]
    assert torch.isfinite(scores).all() and set(scores.topk(2).indices.tolist()) == {2, 3}
    # a constant output carries no dependence: zero map
    assert torch.equal(hsic_scores(designs, torch.full((200, 1), 0.4)),
                       torch.zeros(1, 5, dtype=torch.float64))


def test_designs_are_binary_balanced_and_seeded():
    a = hsic_designs(256, 8, seed=0)
    assert a.shape == (256, 8, 8) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(a.mean()) - 0.5) < 0.02  # a Sobol sequence: balanced per cell
    assert torch.equal(a, hsic_designs(256, 8, seed=0))
    assert not torch.equal(a, hsic_designs(256, 8, seed=1))


def test_saliency_equals_its_definition_from_the_detectors_outputs():
    """The map is the cells' HSIC of the designs and the evidence the detector gave each
    masked image (recomputed here), upsampled bicubically; batching does not change it."""
    inputs = torch.rand(1, 3, *HW, generator=torch.Generator().manual_seed(2)) + 0.5
    settings = DhsicSettings(num_designs=40, grid=4, batch_size=16, seed=3)
    got = dhsic_saliency(region_detector, inputs, BOX, torch.tensor([0]), settings, fill=-1.)
    designs = hsic_designs(40, 4, 3)
    masks = F.interpolate(designs[:, None], size=HW, mode='nearest')[:, 0]
    masked = -1 + (inputs + 1) * masks[:, None]
    y = masked[:, :, REGION[0], REGION[1]].mean((1, 2, 3))  # IoU 1, class 1: the score
    cells = np.array([brute_force_hsic(designs.flatten(1)[:, i].numpy(), y.double().numpy())
                      for i in range(16)]).reshape(1, 1, 4, 4)
    want = F.interpolate(torch.from_numpy(cells).float(), size=HW, mode='bicubic',
                         align_corners=False)[0].clamp(min=0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    one_by_one = dhsic_saliency(region_detector, inputs, BOX, torch.tensor([0]),
                                DhsicSettings(num_designs=40, grid=4, batch_size=1, seed=3),
                                fill=-1.)
    torch.testing.assert_close(one_by_one, got)


def test_recovers_the_region_the_detector_looks_at():
    inputs = torch.ones(1, 3, *HW)
    sal = dhsic_saliency(region_detector, inputs, BOX, torch.tensor([0]),
                         DhsicSettings(num_designs=128, grid=4, batch_size=64))[0]
    inside = torch.zeros(HW, dtype=torch.bool)
    inside[REGION] = True
    assert inside.flatten()[sal.argmax()]
    far = torch.ones(HW, dtype=torch.bool)  # more than a cell (12 x 16 px) from the region
    far[0:36, 16:64] = False
    assert sal[inside].mean() > 20 * sal[far].mean()


@pytest.mark.parametrize('origin', [(0, 0), (5, 6)])
def test_masks_leave_the_padding_of_the_input_alone(origin):
    inputs = torch.rand(1, 3, *HW, generator=torch.Generator().manual_seed(1))
    (top, left), seen = origin, []

    def predict(masked):
        seen.append(masked)
        return region_detector(masked)

    sal = dhsic_saliency(predict, inputs, BOX, torch.tensor([0]),
                         DhsicSettings(num_designs=6, grid=4, batch_size=4), fill=-1.0,
                         image_hw=(40, 50), origin=origin)
    assert sal.shape == (1, 40, 50)
    outside = torch.ones(HW, dtype=torch.bool)
    outside[top:top + 40, left:left + 50] = False
    masked = torch.cat(seen)
    assert len(masked) == 6
    assert torch.equal(masked[:, :, outside], inputs[:, :, outside].expand(6, -1, -1))


@pytest.mark.parametrize('bad, match', [
    (dict(num_designs=1), 'num_designs'), (dict(grid=0), 'grid'), (dict(grid=101), 'grid'),
    (dict(batch_size=0), 'batch_size'), (dict(seed=-1), 'seed'),
    (dict(evidence='all'), 'evidence')])
def test_settings_are_checked(bad, match):
    with pytest.raises(ValueError, match=f'dhsic.{match}'):
        DhsicSettings(**bad)
    with pytest.raises(ValueError, match='unknown settings'):
        ExplanationSettings(method='dhsic', dhsic=dict(masks=4))


@pytest.mark.parametrize('config', ['configs/fcos_tiny_fpn_synthetic.py',
                                    'configs/faster-rcnn_tiny_fpn_synthetic.py'])
def test_explain_batch_dhsic_on_mmdet_detectors(config):
    """D-HSIC through explain_batch: mmdet's own detections, one map each at image size,
    the same maps whatever the batching."""
    from odamtrain.apis import explain_batch

    from .odam_fixtures import build_detector, image_batch
    model = build_detector(config)
    inputs, samples = image_batch(model)
    want = model.predict(inputs, samples)[0].pred_instances
    a = explain_batch(model, inputs, samples, method='dhsic', normalize=None,
                      dhsic=dict(num_designs=12, grid=4, batch_size=12))[0]
    b = explain_batch(model, inputs, samples, method='dhsic', normalize=None,
                      dhsic=dict(num_designs=12, grid=4, batch_size=5))[0]
    torch.testing.assert_close(a.bboxes, want.bboxes)
    assert a.heatmaps.shape == (len(want), *samples[0].ori_shape)
    assert (a.heatmaps >= 0).all()
    torch.testing.assert_close(a.heatmaps, b.heatmaps, rtol=1e-4, atol=1e-6)
