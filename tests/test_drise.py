"""D-RISE against direct computations and toy detectors whose answer is known."""
import pytest
import torch

from odamtrain.explain.drise import drise_grids, drise_masks, drise_saliency

HW = (48, 64)
REGION = (slice(8, 20), slice(30, 46))  # what the toy detector looks at (rows, cols)
BOX = torch.tensor([[30., 8., 46., 20.]])  # the same region as a box x1y1x2y2


def region_detector(masked):
    """One detection on BOX whose score is the mean of the (masked) image over REGION."""
    return [(BOX, torch.tensor([0]), x[:, REGION[0], REGION[1]].mean().reshape(1))
            for x in masked]


def test_masks_shape_range_and_keep_probability():
    g = torch.Generator().manual_seed(0)
    cells, shifts = drise_grids(200, 8, 0.3, HW, g)
    masks = drise_masks(cells, shifts, HW)
    assert masks.shape == (200, *HW) and masks.min() >= 0 and masks.max() <= 1 + 1e-6
    assert abs(float(masks.mean()) - 0.3) < 0.03
    assert (shifts[:, 0] < 6).all() and (shifts[:, 1] < 8).all()  # cells of 6 x 8 pixels
    # one kept cell (row 3 of 8) is upsampled to a bump around (3 + 0.5) * 9 / 8 cells of
    # 6 pixels = pixel row 23.6 (no shift)
    one = torch.zeros(1, 8, 8)
    one[0, 3, 4] = 1
    m = drise_masks(one, torch.tensor([[0, 0]]), HW)[0]
    assert m.max() > 0.9 and 21 <= int(m.argmax()) // HW[1] <= 26


def test_saliency_equals_direct_sum_over_masks_and_does_not_depend_on_batching():
    inputs = torch.ones(1, 3, *HW)
    got = drise_saliency(region_detector, inputs, BOX, torch.tensor([0]), num_masks=50,
                         grid=8, batch_size=16, seed=3)
    cells, shifts = drise_grids(50, 8, 0.5, HW, torch.Generator().manual_seed(3))
    masks = drise_masks(cells, shifts, HW)
    want = sum(float(m[REGION].mean()) * m for m in masks) / 50  # IoU 1, class 1, score
    torch.testing.assert_close(got[0], want)
    one_by_one = drise_saliency(region_detector, inputs, BOX, torch.tensor([0]),
                                num_masks=50, grid=8, batch_size=1, seed=3)
    torch.testing.assert_close(one_by_one, got)


def test_recovers_the_region_the_detector_looks_at():
    inputs = torch.ones(1, 3, *HW)
    sal = drise_saliency(region_detector, inputs, BOX, torch.tensor([0]), num_masks=400,
                         grid=8, batch_size=64, seed=0)[0]
    inside = torch.zeros(HW, dtype=torch.bool)
    inside[REGION] = True
    assert inside.flatten()[sal.argmax()]
    # E[w m(x)] = E[w] E[m] = 0.25 away from the region, more inside it
    assert sal[inside].mean() > sal[~inside].mean() + 0.02
    assert abs(float(sal[~inside].mean()) - 0.25) < 0.01


def test_seed_reproduces_and_changes():
    inputs = torch.ones(1, 3, *HW)
    args = (region_detector, inputs, BOX, torch.tensor([0]))
    a = drise_saliency(*args, num_masks=20, grid=8, seed=1)
    assert torch.equal(a, drise_saliency(*args, num_masks=20, grid=8, seed=1))
    assert not torch.equal(a, drise_saliency(*args, num_masks=20, grid=8, seed=2))


@pytest.mark.parametrize('config', ['configs/fcos_tiny_fpn_synthetic.py',
                                    'configs/faster-rcnn_tiny_fpn_synthetic.py'])
def test_explain_batch_drise_on_mmdet_detectors(config):
    """D-RISE through explain_batch: mmdet's own detections, one map each at image size, and
    the same maps when the masks are batched differently."""
    from odamtrain.apis import explain_batch

    from .odam_fixtures import build_detector, image_batch
    model = build_detector(config)
    inputs, samples = image_batch(model)
    want = model.predict(inputs, samples)[0].pred_instances
    kw = dict(num_masks=12, grid=8, seed=0)
    a = explain_batch(model, inputs, samples, method='drise', normalize=None,
                      drise=dict(batch_size=12, **kw))[0]
    b = explain_batch(model, inputs, samples, method='drise', normalize=None,
                      drise=dict(batch_size=5, **kw))[0]
    torch.testing.assert_close(a.bboxes, want.bboxes)
    assert a.heatmaps.shape == (len(want), *samples[0].ori_shape)
    assert (a.heatmaps >= 0).all() and a.heatmaps.amax((1, 2)).gt(0).any()
    torch.testing.assert_close(a.heatmaps, b.heatmaps, rtol=1e-4, atol=1e-6)
