"""VPS: the greedy search on set functions with a known optimum, and on a toy detector that
only looks at one region."""
import itertools

import numpy as np
import pytest
import torch
from skimage.segmentation import slic

from odamtrain.explain import VpsSettings
from odamtrain.explain.vps import (
    box_regions,
    greedy_order,
    grid_regions,
    rank_attribution,
    search_windows,
    slico_regions,
    vps_forward_count,
    vps_saliency,
    windowed_order,
)

HW = (24, 32)


def test_grid_regions_partition_the_image():
    regions = grid_regions(HW, 12)
    assert regions.shape == (12, *HW)
    assert (regions.sum(0) == 1).all()  # every pixel in exactly one region
    assert regions.flatten(1).sum(1).min() > 0


def test_greedy_recovers_the_optimal_order_of_a_modular_function():
    w = torch.tensor([0.3, 2.0, -1.0, 0.7, 1.1])
    order, values = greedy_order(lambda sets: (sets.float() * w).sum(1), 5)
    assert order == [1, 4, 3, 0, 2]
    torch.testing.assert_close(torch.tensor(values), torch.cumsum(w[order], 0))


def test_greedy_on_a_coverage_function_matches_brute_force_for_the_first_pick_pairs():
    """Weighted coverage (monotone submodular): each greedy prefix of length 1 and 2 is the
    brute-force best extension of the previous prefix."""
    g = torch.Generator().manual_seed(0)
    covers = torch.rand(6, 10, generator=g) < 0.3  # element i covers items
    weight = torch.rand(10, generator=g)

    def f(sets):
        covered = (sets.float() @ covers.float()).clamp(max=1)
        return covered @ weight

    order, values = greedy_order(f, 6)
    one = [float(f(torch.nn.functional.one_hot(torch.tensor([i]), 6).bool())) for i in range(6)]
    assert order[0] == max(range(6), key=lambda i: (one[i], -i))
    best_pair = max((float(f(torch.tensor([[k in (order[0], j) for k in range(6)]]))), -j)
                    for j in range(6) if j != order[0])
    assert values[1] == best_pair[0] and order[1] == -best_pair[1]
    assert all(a <= b + 1e-9 for a, b in itertools.pairwise(values))  # monotone


def test_rank_attribution_is_the_papers_formula_by_hand():
    """A_k = A_{k-1} - |F(S_k) - F(S_{k-1})| from F(empty) (the authors' add_value), then
    min-max: region k gets the gains ranked after it."""
    a = rank_attribution([2, 0, 1], [0.5, 0.8, 0.7], 4, start=0.1)
    # gains |.4|, |.3|, |-.1|: region 2 (first) .3 + .1, region 0 .1, region 1 (last) 0;
    # region 3 never reached
    torch.testing.assert_close(a, torch.tensor([0.1, 0.0, 0.4, 0.0], dtype=torch.float64))
    # the authors' running value, painted in order, then min-max: the same map
    running, painted = 0.0, {}
    for region, gain in zip([2, 0, 1], [0.4, 0.3, 0.1]):
        running -= gain
        painted[region] = running
    lo, hi = min(painted.values()), max(painted.values())
    want = torch.tensor([(painted[r] - lo) / (hi - lo) for r in range(3)], dtype=torch.float64)
    torch.testing.assert_close(a[:3] / a[:3].max(), want)


def test_rank_attribution_ties_and_the_degenerate_case():
    # equal gains: a strictly decreasing staircase, whatever the values' sign
    torch.testing.assert_close(rank_attribution([1, 0, 2], [1.0, 0.8, 1.0], 3, start=0.8),
                               torch.tensor([0.2, 0.4, 0.0], dtype=torch.float64))
    # the first region reaches F(V), no later gain (the authors' 0/0): it alone, its gain
    torch.testing.assert_close(rank_attribution([2, 0, 1], [1.5, 1.5, 1.5], 3, start=1.0),
                               torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64))
    # no gain at all: nothing explains the target
    assert rank_attribution([0, 1], [1.0, 1.0], 2, start=1.0).abs().sum() == 0


def test_toy_detector_looking_at_one_region_ranks_it_first():
    regions = grid_regions(HW, 12)
    target = 5
    box = torch.tensor([0., 0., 10., 10.])

    def predict(images):  # score = how much of region `target` is visible (white)
        return [(box[None], torch.tensor([0]), img[0][regions[target]].mean().reshape(1))
                for img in images]

    inputs = torch.ones(1, 3, *HW)
    sal, order, values, forwards = vps_saliency(
        predict, inputs, box, 0, regions, torch.zeros(3, *HW),
        VpsSettings(search='greedy', max_steps=3, batch_size=7))
    assert order[0] == target and values[0] == 2.0  # g(only) = 1, 1 - g(removed) = 1
    assert sal[regions[target]].min() > sal[~regions[target]].max()
    assert forwards == 2 * (1 + 12 + 11 + 10)  # the empty set, then 3 greedy steps
    assert vps_forward_count(VpsSettings(search='greedy', max_steps=3), 12) == forwards
    assert vps_forward_count(VpsSettings(search='greedy'), 12) == 2 + 12 * 13


def coverage_function(n=9, items=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    covers = torch.rand(n, items, generator=g) < 0.3
    weight = torch.rand(items, generator=g)
    calls = []

    def f(sets):
        calls.append(len(sets))
        return (sets.float() @ covers.float()).clamp(max=1) @ weight
    return f, calls


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_windowed_search_with_a_full_window_is_the_greedy_search(seed):
    f, _ = coverage_function(seed=seed)
    assert windowed_order(f, 9, window=9) == greedy_order(f, 9)
    assert windowed_order(f, 9, window=9, max_steps=4) == greedy_order(f, 9, max_steps=4)


def test_windowed_search_evaluates_the_window_of_highest_known_gains():
    """A modular function (gains never change): any window finds the greedy order, each
    step after the first evaluating exactly min(window, remaining) sets."""
    w = torch.tensor([0.3, 2.0, -1.0, 0.7, 1.1, 0.05, 0.9])
    calls = []

    def f(sets):
        calls.append(len(sets))
        return (sets.float() * w).sum(1)
    order, values = windowed_order(f, 7, window=2, start=0.0)
    assert order == greedy_order(f, 7)[0] == [1, 4, 6, 3, 0, 5, 2]
    assert calls[0] == 7 and calls[1:7] == [2, 2, 2, 2, 2, 1]
    assert 2 + 2 * sum(calls[:7]) == vps_forward_count(VpsSettings(window=2), 7)
    # on a coverage function a small window may differ from greedy, but stays a valid order
    f, calls = coverage_function()
    order, values = windowed_order(f, 9, window=3)
    assert sorted(order) == list(range(9)) and calls == [1, 9, 3, 3, 3, 3, 3, 3, 2, 1]
    torch.testing.assert_close(torch.tensor(values[-1]), f(torch.ones(1, 9, dtype=torch.bool))[0])


def test_vps_saliency_windowed_counts_its_forwards():
    regions = grid_regions(HW, 12)
    box = torch.tensor([0., 0., 10., 10.])

    def predict(images):
        return [(box[None], torch.tensor([0]), img[0][regions[5]].mean().reshape(1))
                for img in images]
    _, order, _, forwards = vps_saliency(predict, torch.ones(1, 3, *HW), box, 0, regions,
                                         torch.zeros(3, *HW), VpsSettings(window=4))
    assert order[0] == 5 and sorted(order) == list(range(12))
    assert forwards == vps_forward_count(VpsSettings(window=4), 12) \
        == 2 + 2 * (12 + 4 * 8 + 3 + 2 + 1)
    with pytest.raises(ValueError, match='search must be one of'):
        VpsSettings(search='beam')


def test_slico_regions_are_scikit_image_superpixels_partitioning_the_image():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = 200  # two flat halves plus noise
    image = (image + rng.integers(0, 20, image.shape)).astype(np.uint8)
    regions = slico_regions(image, 12)
    assert regions.dtype == torch.bool and regions.shape[1:] == (40, 60)
    assert (regions.sum(0) == 1).all() and regions.flatten(1).any(1).all()
    # the same partition as scikit-image's SLICO, numbered in raster order
    labels = slic(image, n_segments=12, slic_zero=True, start_label=0, channel_axis=-1)
    ours = regions.float().argmax(0).numpy()
    pairs = set(zip(labels.ravel().tolist(), ours.ravel().tolist()))
    assert len(pairs) == len(np.unique(labels)) == len(regions)
    first = [int(np.flatnonzero(ours.ravel() == k)[0]) for k in range(len(regions))]
    assert first == sorted(first)
    # superpixels follow the image: none straddles the edge between the halves
    assert all(not (r[:, 29].any() and r[:, 30].any()) or r[:, :30].sum() * r[:, 30:].sum() == 0
               for r in regions)


def test_windowed_search_with_a_greedy_head_and_no_window():
    """head greedy steps, then (window 0) the rest in the order of their gains at the last
    evaluated step, F estimated as the running sum of those gains; no more evaluations."""
    f, calls = coverage_function(n=8)
    greedy, _ = greedy_order(f, 8)
    assert windowed_order(f, 8, window=0, head=8, start=0.0) == greedy_order(f, 8)
    calls.clear()
    order, values = windowed_order(f, 8, window=0, head=2, start=0.0)
    assert calls == [8, 7] and order[:2] == greedy[:2] and sorted(order) == list(range(8))
    # the tail: gains w.r.t. the first pick, evaluated at step 2
    first = torch.zeros(1, 8, dtype=torch.bool)
    first[0, order[0]] = True
    base = float(f(first)[0])
    gains = {}
    for r in range(8):
        if r != order[0]:
            s = first.clone()
            s[0, r] = True
            gains[r] = float(f(s)[0]) - base
    tail = sorted((r for r in gains if r != order[1]), key=lambda r: (-gains[r], r))
    assert order[2:] == tail
    torch.testing.assert_close(torch.tensor(values[2:], dtype=torch.float64),
                               values[1] + torch.cumsum(torch.tensor(
                                   [gains[r] for r in tail], dtype=torch.float64), 0))
    assert search_windows(8, 0, 2) == [8, 7]
    assert search_windows(64, 6, 1)[:3] == [64, 6, 6] and search_windows(64, 6, 1)[-1] == 1
    assert vps_forward_count(VpsSettings(window=0, head=2), 8) == 2 + 2 * 15
    assert vps_forward_count(VpsSettings(window=6, head=1), 64) == 2 + 2 * sum(
        [64] + [min(64 - k, 6) for k in range(1, 64)])


def paired_function(calls=None):
    """Modular weights plus a bonus of 5 once elements 0 and 5 are both in: element 5's gain
    jumps from 0 to 5 after 0 is picked, a lazy window on remembered gains never sees it."""
    w = torch.tensor([1.0, 0.9, 0.8, 0.1, 0.05, 0.0])

    def f(sets):
        if calls is not None:
            calls.append(sets.clone())
        s = sets.float()
        return s @ w + 5 * s[:, 0] * s[:, 5]
    return f


def test_box_slots_refresh_the_focus_regions_round_robin():
    """Hand-computed: greedy takes 0 then 5 (gain 5); a window of 2 on remembered gains
    sees 5 only when two elements are left; one round-robin slot on the focus {4, 5} looks
    at 4 (higher last gain of the two, both last seen at step 0) at step 1, then at 5 (seen
    longest ago) at step 2."""
    f = paired_function()
    assert greedy_order(f, 6)[0] == [0, 5, 1, 2, 3, 4]
    assert windowed_order(f, 6, window=2, start=0.0)[0] == [0, 1, 2, 3, 5, 4]
    calls = []
    focus = torch.tensor([False, False, False, False, True, True])
    order, values = windowed_order(paired_function(calls), 6, window=2, start=0.0,
                                   focus=focus, focus_slots=1)
    assert order == [0, 1, 5, 2, 3, 4]
    # the element each candidate adds: where a candidate differs from the chosen prefix
    added = [[int((c[i] & ~c.all(0)).nonzero()[0]) for i in range(len(c))] for c in calls[1:3]]
    assert [len(c) for c in calls] == [6, 2, 2, 2, 2, 1]
    assert added[0] == [1, 4] and added[1] == [2, 5]
    torch.testing.assert_close(torch.tensor(values[-1]), f(torch.ones(1, 6, dtype=torch.bool))[0])
    # focus slots on a single focus element: found at once, the greedy order
    only5 = torch.tensor([False] * 5 + [True])
    assert windowed_order(f, 6, window=2, start=0.0, focus=only5, focus_slots=1)[0][:2] == [0, 5]
    # no slots, or an empty focus: the plain window
    plain = windowed_order(f, 6, window=2, start=0.0)
    assert windowed_order(f, 6, window=2, start=0.0, focus=focus, focus_slots=0) == plain
    assert windowed_order(f, 6, window=2, start=0.0, focus=torch.zeros(6, dtype=torch.bool),
                          focus_slots=2) == plain
    # more slots than the window has places: the whole window goes to the focus
    whole = windowed_order(f, 6, window=2, start=0.0, focus=focus, focus_slots=2)
    assert windowed_order(f, 6, window=2, start=0.0, focus=focus, focus_slots=5) == whole


def test_box_regions_are_those_with_a_pixel_centre_in_the_box():
    regions = grid_regions(HW, 12)  # 3 x 4 cells of 8 x 8
    brute = torch.tensor([bool(any(r[y, x] for y in range(HW[0]) for x in range(HW[1])
                                   if 5.2 <= x + 0.5 <= 16.5 and 0 <= y + 0.5 <= 7.4))
                          for r in regions])
    torch.testing.assert_close(box_regions(regions, torch.tensor([5.2, 0., 16.5, 7.4])), brute)
    assert brute.tolist() == [True, True, True] + [False] * 9
    assert not box_regions(regions, torch.tensor([3.6, 3.6, 4.4, 4.4])).any()  # no centre


def test_vps_saliency_gives_the_box_slots_to_the_regions_of_the_target_box():
    """A toy detector that looks only at region 5: the head picks it, then with a window of
    one place, given to the box's regions, the next picks are the regions with a pixel
    centre in the target box scaled to the input (cells 1 and 2), lower index first (equal
    gains); without the slot, all gains equal, the lowest indices (0, 1)."""
    regions = grid_regions(HW, 12)  # 3 x 4 cells of 8 x 8
    box = torch.tensor([4., 0., 12., 4.])  # original pixels; x 2 in the input: cells 1, 2

    def predict(images):
        return [(box[None], torch.tensor([0]), img[0][regions[5]].mean().reshape(1))
                for img in images]
    args = (predict, torch.ones(1, 3, *HW), box, 0, regions, torch.zeros(3, *HW))
    slot = vps_saliency(*args, VpsSettings(window=1, box_slots=1), input_scale=(2., 2.))
    plain = vps_saliency(*args, VpsSettings(window=1, box_slots=0))
    unscaled = vps_saliency(*args, VpsSettings(window=1, box_slots=1))  # cells 0, 1
    assert slot[1][:3] == [5, 1, 2] and plain[1][:3] == [5, 0, 1] and unscaled[1][:3] == [5, 0, 1]
    assert slot[1][3:] == [0, 3, 4, 6, 7, 8, 9, 10, 11] and slot[3] == plain[3]


@pytest.mark.parametrize('weights', [[0.1, 0.4, 0.2, 0.25],  # distinct
                                     [0.125, 0.25, 0.125, 0.25],  # ties (exact in float)
                                     [0.0, 0.6, 0.0, 0.0]])  # the first reaches F(V)
def test_vps_map_of_a_toy_detector_is_the_papers_formula(weights):
    """A detector whose score is sum_r w_r x (how much of region r is visible): greedy picks
    by w (ties: the lower index, the authors' argmax), F(S) = 1 - W + 2 sum_S w, and each
    region's map value is the gains ranked after it (the degenerate case: the first
    region's own gain), every pixel of every region."""
    regions = grid_regions((8, 8), 4)
    w = torch.tensor(weights)
    box = torch.tensor([0., 0., 8., 8.])

    def predict(images):
        return [(box[None], torch.tensor([0]),
                 (torch.stack([img[0][r].mean() for r in regions]) * w).sum().reshape(1))
                for img in images]

    sal, order, values, _ = vps_saliency(predict, torch.ones(1, 3, 8, 8), box, 0, regions,
                                         torch.zeros(3, 8, 8), VpsSettings(search='greedy'))
    want_order = sorted(range(4), key=lambda r: (-weights[r], r))
    assert order == want_order
    total = float(w.sum())
    path = [1 - total + 2 * sum(weights[r] for r in want_order[:k + 1]) for k in range(4)]
    torch.testing.assert_close(torch.tensor(values, dtype=torch.float64),
                               torch.tensor(path, dtype=torch.float64))
    gains = [2 * weights[r] for r in want_order]
    after = [sum(gains[k + 1:]) for k in range(4)]
    if after[0] == 0:
        after[0] = gains[0]
    for k, r in enumerate(want_order):
        assert torch.allclose(sal[regions[r]], torch.tensor(after[k], dtype=sal.dtype),
                              atol=1e-6)
