"""VPS: the greedy search on set functions with a known optimum, and on a toy detector that
only looks at one region."""
import itertools

import torch

from odamtrain.explain.vps import (
    greedy_order,
    grid_regions,
    rank_attribution,
    vps_forward_count,
    vps_saliency,
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


def test_rank_attribution_decreases_with_rank():
    a = rank_attribution([2, 0, 1], [0.5, 0.8, 0.7], 4, start=0.1)
    # gains |.4|, |.3|, |-.1| -> tails .8, .4, .1 ; region 3 never reached
    torch.testing.assert_close(a, torch.tensor([0.4, 0.1, 0.8, 0.0], dtype=torch.float64))


def test_toy_detector_looking_at_one_region_ranks_it_first():
    regions = grid_regions(HW, 12)
    target = 5
    box = torch.tensor([0., 0., 10., 10.])

    def predict(images):  # score = how much of region `target` is visible (white)
        return [(box[None], torch.tensor([0]), img[0][regions[target]].mean().reshape(1))
                for img in images]

    inputs = torch.ones(1, 3, *HW)
    sal, order, values, forwards = vps_saliency(predict, inputs, box, 0, regions,
                                                torch.zeros(3, *HW), max_steps=3,
                                                batch_size=7)
    assert order[0] == target and values[0] == 2.0  # g(only) = 1, 1 - g(removed) = 1
    assert sal[regions[target]].min() > sal[~regions[target]].max()
    assert forwards == 2 * (1 + 12 + 11 + 10)  # the empty set, then 3 greedy steps
    assert vps_forward_count(12, 3) == forwards and vps_forward_count(12) == 2 + 12 * 13
