"""Localisation metrics on maps whose answers are known by construction."""
import math

import pytest
import torch

from odamtrain.evaluation.functional import (
    box_mask,
    compactness,
    energy_pointing_game,
    object_discrimination_index,
    pointing_game,
)

HW = (40, 60)
BOX = (10, 5, 30, 25)  # x1 y1 x2 y2: pixel centres x in 10..29, y in 5..24 -> 20 x 20


def test_box_mask_counts_pixel_centres():
    m = box_mask(BOX, HW)
    assert m.sum() == 20 * 20 and m[5, 10] and m[24, 29] and not m[4, 10] and not m[5, 30]
    assert box_mask((10.6, 5, 11.4, 6), HW).sum() == 0  # no pixel centre inside


def test_all_heat_inside_the_box():
    h = torch.zeros(HW)
    h[8:20, 12:25] = torch.rand(12, 13) + 0.1
    assert pointing_game(h, BOX) == 1.0
    assert energy_pointing_game(h, BOX) == pytest.approx(1.0)
    assert object_discrimination_index(h, BOX, [(40, 5, 55, 30)]) == 0.0


def test_uniform_map():
    h = torch.ones(HW)
    assert energy_pointing_game(h, BOX) == pytest.approx(400 / (40 * 60))
    # ODI on a uniform map = area of the other box outside ours / area of the union
    other = (20, 5, 50, 25)  # 30 x 20, half of our box's width overlaps
    assert object_discrimination_index(h, BOX, [other]) == pytest.approx(400 / 800)


def test_pointing_game_outside_and_zero_map():
    h = torch.zeros(HW)
    h[30, 50] = 1.0
    assert pointing_game(h, BOX) == 0.0
    assert math.isnan(pointing_game(torch.zeros(HW), BOX))
    assert math.isnan(energy_pointing_game(torch.zeros(HW), BOX))
    assert math.isnan(compactness(torch.zeros(HW), BOX))
    assert math.isnan(object_discrimination_index(torch.zeros(HW), BOX, [(40, 5, 55, 30)]))


def test_compactness_hand_computed():
    """Two equal peaks 3 px apart: the energy sits at d = 0 and d = 3 from the argmax (the
    first peak): sqrt((0 + 9) / 2 / ((20^2 + 20^2) / 4))."""
    h = torch.zeros(HW)
    h[10, 15] = 1.0
    h[10, 18] = 1.0
    assert compactness(h, BOX) == pytest.approx(math.sqrt(4.5 / 200))
    point = torch.zeros(HW)
    point[10, 15] = 2.0
    assert compactness(point, BOX) == 0.0


def test_odi_counts_overlap_as_the_target():
    h = torch.zeros(HW)
    h[10, 22] = 1.0  # inside both our box and the other one: ours
    h[10, 40] = 3.0  # only in the other box
    other = (20, 5, 50, 25)
    assert object_discrimination_index(h, BOX, [other]) == pytest.approx(3 / 4)
    assert object_discrimination_index(h, BOX, torch.zeros(0, 4)) == 0.0


METRICS = (pointing_game, energy_pointing_game, compactness)
SUB_PIXEL = (10.6, 5, 11.4, 6)  # covers no pixel centre


@pytest.mark.parametrize('heatmap', ['peak_outside', 'uniform', 'zero'])
def test_one_nan_policy_for_a_box_without_pixels_and_a_zero_map(heatmap):
    """Every metric is NaN for a box that covers no pixel centre and for an all-zero map,
    whatever the map (Quantus returns NaN there too); a box with pixels and a map with
    energy is always defined."""
    h = {'peak_outside': torch.zeros(HW).index_put_((torch.tensor([30]), torch.tensor([50])),
                                                    torch.tensor([1.0])),
         'uniform': torch.ones(HW), 'zero': torch.zeros(HW)}[heatmap]
    for fn in METRICS:
        assert math.isnan(fn(h, SUB_PIXEL)), fn.__name__
    assert math.isnan(object_discrimination_index(h, SUB_PIXEL, [(40, 5, 55, 30)]))
    defined = heatmap != 'zero'
    for fn in METRICS:
        assert math.isnan(fn(h, BOX)) != defined, fn.__name__
    # ODI with energy only off every object box: 0 / 0, NaN
    if heatmap == 'peak_outside':
        assert math.isnan(object_discrimination_index(h, BOX, [(0, 30, 5, 35)]))


def test_every_audit_metric_declares_its_direction_and_paper():
    from odamtrain.evaluation.explanation_audit import (
        FAITHFULNESS_METRICS,
        LOCALISATION_METRICS,
        METRIC_DIRECTIONS,
    )
    want = dict(pointing_game='higher', energy_pointing_game='higher', compactness='lower',
                odi='lower', deletion_auc='lower', insertion_auc='higher',
                highest_score='higher', success='higher')
    for evidence in ('odam', 'vps', 'class', 'iou'):  # the AUCs under extra evidences
        want.update({f'deletion_auc_{evidence}': 'lower', f'insertion_auc_{evidence}': 'higher'})
    assert METRIC_DIRECTIONS == want
    for fn in {**LOCALISATION_METRICS, **FAITHFULNESS_METRICS}.values():
        assert fn.paper and any(str(y) in fn.paper for y in range(2012, 2027)), fn.__name__
    with pytest.raises(ValueError, match='direction must be one of'):
        from odamtrain.evaluation.functional import metric
        metric('up', 'x')
