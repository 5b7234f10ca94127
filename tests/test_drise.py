"""D-RISE against direct computations and toy detectors whose answer is known."""
import pytest
import torch

from odamtrain.explain import DriseSettings
from odamtrain.explain.drise import (
    DriseSums,
    drise_accumulate,
    drise_estimate,
    drise_grids,
    drise_masks,
    drise_saliency,
)

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


@pytest.mark.parametrize('estimator', ['mean', 'coverage', 'contrast'])
def test_saliency_equals_direct_sum_over_masks_and_does_not_depend_on_batching(estimator):
    inputs = torch.ones(1, 3, *HW)
    got = drise_saliency(region_detector, inputs, BOX, torch.tensor([0]), DriseSettings(
        num_masks=50, grid=8, batch_size=16, seed=3, estimator=estimator))
    cells, shifts = drise_grids(50, 8, 0.5, HW, torch.Generator().manual_seed(3))
    masks = drise_masks(cells, shifts, HW).double()
    w = torch.tensor([float(m[REGION].mean()) for m in masks],  # IoU 1, class 1, score
                     dtype=torch.float64)
    if estimator == 'contrast':  # least squares, pixel by pixel: slope of w on m(x)
        want = torch.zeros(HW, dtype=torch.float64)
        for y in range(HW[0]):
            for x in range(HW[1]):
                design = torch.stack([torch.ones(50, dtype=torch.float64), masks[:, y, x]], 1)
                want[y, x] = torch.linalg.lstsq(design, w[:, None]).solution[1, 0]
        want = want.clamp(min=0)
    else:
        weighted = (w[:, None, None] * masks).sum(0)
        want = weighted / (50 if estimator == 'mean' else masks.sum(0))
    torch.testing.assert_close(got[0].double(), want, rtol=1e-4, atol=1e-5)
    one_by_one = drise_saliency(region_detector, inputs, BOX, torch.tensor([0]), DriseSettings(
        num_masks=50, grid=8, batch_size=1, seed=3, estimator=estimator))
    torch.testing.assert_close(one_by_one, got)


def test_coverage_estimator_equals_xaitk_saliency():
    """Peer: xaitk-saliency's per-pixel coverage normalisation (DRISEScoring's
    ``weight_regions_by_scalar(..., inv_masks=False)``) on the same masks and weights."""
    from xaitk_saliency.utils.masking import weight_regions_by_scalar
    g = torch.Generator().manual_seed(0)
    cells, shifts = drise_grids(40, 6, 0.4, HW, g)
    masks = drise_masks(cells, shifts, HW).double()
    weights = torch.rand(40, 3, generator=g, dtype=torch.float64)
    sums = DriseSums(torch.einsum('mt,mhw->thw', weights, masks), masks.sum(0),
                     (masks * masks).sum(0), weights.sum(0), 40)
    got = drise_estimate(sums, 'coverage')
    want = weight_regions_by_scalar(weights.numpy(), masks.numpy(), inv_masks=False)
    torch.testing.assert_close(got, torch.from_numpy(want))
    with pytest.raises(ValueError, match='estimator must be one of'):
        drise_estimate(sums, 'median')


@pytest.mark.parametrize('estimator, away', [('mean', 0.25), ('coverage', 0.5),
                                             ('contrast', 0.0)])
def test_recovers_the_region_the_detector_looks_at(estimator, away):
    inputs = torch.ones(1, 3, *HW)
    sal = drise_saliency(region_detector, inputs, BOX, torch.tensor([0]), DriseSettings(
        num_masks=400, grid=8, batch_size=64, seed=0, estimator=estimator))[0]
    inside = torch.zeros(HW, dtype=torch.bool)
    inside[REGION] = True
    assert inside.flatten()[sal.argmax()]
    # away from the region w and m(x) are independent: E[w m(x)] = E[w] E[m] = 0.25 (mean),
    # E[w m(x)] / E[m(x)] = E[w] = 0.5 (coverage), Cov(w, m(x)) = 0 (contrast); more
    # inside it
    assert sal[inside].mean() > sal[~inside].mean() + 0.02
    far = torch.ones(HW, dtype=torch.bool)  # two mask cells (6 x 8 px) away from the region
    far[0:32, 14:62] = False
    assert abs(float(sal[far].mean()) - away) < 0.015
    if estimator == 'contrast':  # no offset: about 0 far away, the signal in the region
        assert sal[inside].mean() > 10 * sal[far].mean()


@pytest.mark.parametrize('origin', [(0, 0), (7, 3)])
def test_masks_leave_the_padding_of_the_input_alone(origin):
    """Only the image (image_hw from origin: the top-left, or pasted at an offset) is
    masked: the detector sees the padding as it was, and the saliency covers the image."""
    inputs = torch.rand(1, 3, *HW, generator=torch.Generator().manual_seed(1))
    image_hw = (40, 50)
    (top, left), seen = origin, []
    window = (slice(None), slice(None), slice(top, top + 40), slice(left, left + 50))
    outside = torch.ones(HW, dtype=torch.bool)
    outside[window[2:]] = False

    def predict(masked):
        seen.append(masked)
        return region_detector(masked)

    sal = drise_saliency(predict, inputs, BOX, torch.tensor([0]),
                         DriseSettings(num_masks=10, grid=4, batch_size=4, seed=0), fill=-1.0,
                         image_hw=image_hw, origin=origin)
    assert sal.shape == (1, *image_hw)
    masked = torch.cat(seen)
    assert torch.equal(masked[:, :, outside], inputs[:, :, outside].expand(10, -1, -1))
    cells, shifts = drise_grids(10, 4, 0.5, image_hw, torch.Generator().manual_seed(0))
    masks = drise_masks(cells, shifts, image_hw)[:, None]
    torch.testing.assert_close(masked[window], -1 + (inputs[window] + 1) * masks)
    sums = drise_accumulate(region_detector, inputs, BOX, torch.tensor([0]), cells, shifts,
                            image_hw, torch.full((3, 1, 1), -1.), batch_size=3, origin=origin)
    torch.testing.assert_close(sums.coverage, masks[:, 0].double().sum(0))
    assert sums.count == 10 and sums.weighted.dtype == torch.float64
    torch.testing.assert_close(sal, drise_estimate(sums).float())


def test_seed_reproduces_and_changes():
    inputs = torch.ones(1, 3, *HW)
    args = (region_detector, inputs, BOX, torch.tensor([0]))
    a = drise_saliency(*args, DriseSettings(num_masks=20, grid=8, seed=1))
    assert torch.equal(a, drise_saliency(*args, DriseSettings(num_masks=20, grid=8, seed=1)))
    assert not torch.equal(a, drise_saliency(*args, DriseSettings(num_masks=20, grid=8, seed=2)))


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
