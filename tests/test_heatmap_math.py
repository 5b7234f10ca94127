"""The pure heat-map functions: Phi, CAM weights, resizing, normalisation, RoI pasting."""
import math

import pytest
import torch
import torch.nn.functional as F

from odamtrain.explain.heatmap import (
    box_sigma,
    channel_weighted_map,
    gaussian_kernels,
    gaussian_smooth,
    gradcam_pp_weights,
    gradcam_weights,
    normalize_maps,
    odam_heatmap,
    paste_roi_maps,
    resize_maps,
    smooth_windows,
    ssgradcam_pp_weights,
)


def test_gaussian_kernel_is_normalised_and_matches_formula():
    k = gaussian_kernels(torch.tensor([0.7, 2.0]), radius=6)
    torch.testing.assert_close(k.sum(1), torch.ones(2))
    x = torch.arange(-6, 7.0)
    ref = torch.exp(-x ** 2 / (2 * 2.0 ** 2))
    torch.testing.assert_close(k[1], ref / ref.sum())
    assert torch.equal(k[0], k[0].flip(0))


def test_smoothing_a_delta_gives_the_separable_gaussian_per_sample():
    maps = torch.zeros(2, 3, 15, 15)
    maps[:, :, 7, 7] = 1.0
    sigma = torch.tensor([1.0, 2.0])
    out = gaussian_smooth(maps, sigma)
    r = math.ceil(3 * 2.0)
    for i in range(2):
        k = gaussian_kernels(sigma[i:i + 1], r)[0]
        expected = torch.zeros(15, 15)
        expected[7 - r:7 + r + 1, 7 - r:7 + r + 1] = k[:, None] * k[None, :]
        for c in range(3):
            torch.testing.assert_close(out[i, c], expected)
    assert out[1].max() < out[0].max()  # wider for the larger box


@pytest.mark.parametrize('hw,widest', [((13, 17), 2.0), ((40, 50), 0.5)])
def test_smoothing_equals_a_2d_convolution_with_zero_padding(hw, widest):
    """(Small windows go through banded matrices, large maps with a narrow kernel through a
    depthwise convolution: both against a plain 2-D convolution per map.)"""
    torch.manual_seed(0)
    maps = torch.randn(5, 3, *hw, dtype=torch.float64)
    sigma = torch.tensor([0.3, 0.6 * widest, 0.2, widest, 0.0], dtype=torch.float64)
    out = gaussian_smooth(maps, sigma)
    r = math.ceil(3 * widest)  # one radius for all: the widest
    for i in range(5):
        k = gaussian_kernels(sigma[i:i + 1], r)[0]
        w = k[:, None] * k[None, :]  # [K, K] the 2-D kernel
        ref = F.conv2d(maps[i][:, None], w[None, None], padding=r)[:, 0]
        torch.testing.assert_close(out[i], ref)


def test_sigma_follows_the_box():
    boxes = torch.tensor([[0, 0, 32, 64.0], [10, 10, 74, 138]])  # second: 2x the size
    s8 = box_sigma(boxes, 8)
    torch.testing.assert_close(s8[1], 2 * s8[0])
    torch.testing.assert_close(s8[0], torch.tensor(0.125 * math.sqrt(32 * 64) / 8))
    torch.testing.assert_close(box_sigma(boxes, 16), s8 / 2)


def test_odam_without_phi_is_the_raw_elementwise_map():
    g = torch.randn(4, 5, 6, 7)
    a = torch.randn(1, 5, 6, 7)
    torch.testing.assert_close(odam_heatmap(g, a, None), torch.relu((g * a).sum(1)))
    smoothed = odam_heatmap(g, a, torch.full((4,), 1.5))
    assert not torch.allclose(smoothed, odam_heatmap(g, a, None))


def test_gradcam_weights_hand_computed():
    g = torch.zeros(1, 2, 2, 2)
    g[0, 0] = torch.tensor([[1.0, 3], [0, 0]])  # mean 1
    g[0, 1] = torch.tensor([[-2.0, 0], [0, 0]])  # mean -0.5
    torch.testing.assert_close(gradcam_weights(g), torch.tensor([[1.0, -0.5]]))
    torch.testing.assert_close(gradcam_weights(g, area=8), torch.tensor([[0.5, -0.25]]))
    a = torch.ones(1, 2, 2, 2)
    a[0, 1] = 4.0
    torch.testing.assert_close(channel_weighted_map(torch.tensor([[1.0, -0.5]]), a),
                               torch.zeros(1, 2, 2))  # 1 - 2 = -1 -> ReLU 0
    # Grad-CAM++ on channel 0 with A = 1 (S = sum A = 4): alpha = g^2 / (2 g^2 + 4 g^3)
    w = gradcam_pp_weights(g, a.sum((2, 3)))
    expected0 = 1 / (2 + 4) * 1 + 9 / (18 + 108) * 3
    torch.testing.assert_close(w[0, 0], torch.tensor(expected0))
    torch.testing.assert_close(w[0, 1], torch.tensor(0.0))  # only negative gradient
    # SSGrad-CAM++: each positive gradient also times |g| / max |g| (max 3, both channels)
    w = ssgradcam_pp_weights(g, a.sum((2, 3)))
    torch.testing.assert_close(w[0, 0], torch.tensor(1 / 6 * 1 * (1 / 3) + 9 / 126 * 3 * 1))
    torch.testing.assert_close(w[0, 1], torch.tensor(0.0))


def test_cam_pp_weights_equal_the_authors_expressions():
    """On random tensors: Grad-CAM++ == its authors' closed form (alpha = g^2 / (2 g^2 +
    g^3 * the channel's activation sum)); SSGrad-CAM++ == the VPS authors' baseline with a box
    covering the whole map (their eps only guards 0 / 0: none here, float64); a window of
    the gradient with the whole map's sums gives the whole map's weights."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(3, 4, 6, 7, generator=gen, dtype=torch.float64) * 0.1
    a = torch.rand(3, 4, 6, 7, generator=gen, dtype=torch.float64)
    eps = 1e-300
    total = a.sum((2, 3))[:, :, None, None]
    alpha = g ** 2 / (2 * g ** 2 + total * g ** 3 + eps)
    torch.testing.assert_close(gradcam_pp_weights(g, a.sum((2, 3))),
                               (alpha * g.clamp(min=0)).sum((2, 3)))
    space = g.abs() / g.abs().amax((1, 2, 3), keepdim=True)
    want = (torch.relu(g * space) * alpha).sum((2, 3))
    torch.testing.assert_close(ssgradcam_pp_weights(g, a.sum((2, 3))), want)
    window = torch.zeros_like(g)
    window[..., 1:4, 2:6] = g[..., 1:4, 2:6]
    for weights in (gradcam_pp_weights, ssgradcam_pp_weights):
        torch.testing.assert_close(weights(window[..., 1:4, 2:6], a.sum((2, 3))),
                                   weights(window, a.sum((2, 3))))


def test_resize_crops_padding_and_scales():
    m = torch.zeros(1, 4, 4)  # stride 8 map of a 20 x 30 input padded to 32 x 32
    m[0, :3, :3] = 1.0  # cells covering rows 0..23, cols 0..23
    m[0, 3, :] = 5.0  # padding row only (input is 20 high: ceil(20 / 8) = 3 rows)
    out = resize_maps(m, 8, (20, 30), (40, 60))
    assert out.shape == (1, 40, 60)
    assert out.max() <= 1.0 + 1e-6  # the padding row never reaches the image
    assert out[0, :30, :30].min() > 0.99 and out[0, :, -2:].max() < 0.01


@pytest.mark.parametrize('stride,input_hw,out_hw', [
    (8, (20, 30), (40, 60)), (16, (37, 53), (50, 71)), (32, (100, 70), (100, 70)),
    (1, (9, 11), (5, 23)), (8, (200, 300), (400, 600))])
@pytest.mark.parametrize('origin', [(0, 0), (5, 1), (16, 29)])
def test_resize_equals_upsampling_by_the_stride_then_resizing(stride, input_hw, out_hw, origin):
    """Both paths (matrices for small outputs, two bilinear passes for large ones), the
    image at the input's top-left or pasted at an offset (CenterNet's canvas)."""
    torch.manual_seed(0)
    (top, left), (h, w) = origin, input_hw
    hc, wc = math.ceil((top + h) / stride), math.ceil((left + w) / stride)
    maps = torch.randn(3, hc + 2, wc + 1, dtype=torch.float64).relu()  # padded batch map
    x = F.interpolate(maps[:, None, :hc, :wc], scale_factor=stride, mode='bilinear',
                      align_corners=False)[..., top:top + h, left:left + w]
    ref = F.interpolate(x, size=out_hw, mode='bilinear', align_corners=False)[:, 0]
    got = resize_maps(maps, stride, input_hw, out_hw, origin)
    torch.testing.assert_close(got, ref)
    assert got.min() >= 0  # convex combinations of maps >= 0


def test_normalisation():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[0.0, 0.0], [0.0, 0.0]]])
    mm = normalize_maps(maps, 'minmax')
    torch.testing.assert_close(mm[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(mm[1], maps[1])
    l2 = normalize_maps(maps, 'l2')
    torch.testing.assert_close(l2[0].norm(), torch.tensor(1.0))
    assert normalize_maps(maps, None) is maps
    copy = maps.clone()
    assert normalize_maps(copy, 'minmax', inplace=True).data_ptr() == copy.data_ptr()
    torch.testing.assert_close(copy, mm)
    with pytest.raises(ValueError, match='normalize'):
        normalize_maps(maps, 'max')


def test_paste_roi_map_fills_exactly_its_box():
    maps = torch.ones(2, 7, 7)
    boxes = torch.tensor([[2.0, 3.0, 9.0, 8.0], [0.0, 0.0, 20.0, 10.0]])
    out = paste_roi_maps(maps, boxes, (10, 12))
    inside = torch.zeros(10, 12)
    inside[3:8, 2:9] = 1
    torch.testing.assert_close(out[0], inside)
    torch.testing.assert_close(out[1], torch.ones(10, 12))
    ramp = torch.arange(7.0)[None, :].repeat(7, 1)[None]  # increasing left to right
    r = paste_roi_maps(ramp, torch.tensor([[0.0, 0.0, 70.0, 7.0]]), (7, 70))[0, 0]
    assert (r[1:] >= r[:-1]).all() and r[0] == 0 and r[-1] == 6


@pytest.mark.parametrize('k, radius', [(3, 4), (11, 6), (5, 1)])
def test_smooth_windows_equals_smoothing_the_padded_window(k, radius):
    """Phi on a window zero outside == gaussian_smooth of the window padded by the kernels'
    radius (the band of rows and columns the window reaches)."""
    g = torch.Generator().manual_seed(k)
    windows = torch.randn(5, 7, k, k, generator=g)
    sigma = torch.rand(5, generator=g) * radius / 3  # 3 sigma <= radius
    sigma[0] = radius / 3 - 0.01  # the largest sets the truncation (ceil(3 sigma))
    expected = gaussian_smooth(F.pad(windows, (radius,) * 4), sigma)
    torch.testing.assert_close(smooth_windows(windows, sigma, radius), expected,
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(smooth_windows(windows, sigma, 0), windows)
