"""Deletion / insertion on a toy detector whose evidence is a known function of the visible
pixels, so that the curves and AUCs are known in closed form."""
import math

import pytest
import torch

from odamtrain.evaluation.functional import (
    curve_auc,
    deletion_insertion,
    detection_evidence,
    perturbed_images,
)

HW = (20, 30)
BOX = torch.tensor([5., 4., 15., 12.])  # 10 x 8 = 80 pixels: rows 4..11, cols 5..14
INSIDE = torch.zeros(HW, dtype=torch.bool)
INSIDE[4:12, 5:15] = True


def box_detector(images):
    """One detection on BOX, class 0, score = mean of channel 0 inside BOX."""
    return [(BOX[None], torch.tensor([0]), img[0][INSIDE].mean().reshape(1)) for img in images]


def run(heatmap, steps=10):
    image = torch.ones(3, *HW)
    zeros = torch.zeros(3, *HW)
    return deletion_insertion(box_detector, image, heatmap, BOX, 0, box_area=80.,
                              deletion_baseline=zeros, insertion_baseline=zeros, steps=steps,
                              batch_size=4)


def test_heat_on_the_object_gives_linear_curves():
    """8 pixels of the box per step: evidence 1 - k/10 (deletion), k/10 (insertion); the
    odam evidence counts it (IoU 1 > 0.5)."""
    heat = INSIDE.float() * torch.rand(HW, generator=torch.Generator().manual_seed(0)) + INSIDE
    out = run(heat)
    torch.testing.assert_close(torch.tensor(out['deletion']), 1 - torch.arange(11) / 10)
    torch.testing.assert_close(torch.tensor(out['insertion']), torch.arange(11) / 10.)
    assert out['deletion_auc'] == pytest.approx(0.5) and out['insertion_auc'] == pytest.approx(0.5)


def test_heat_off_the_object_changes_nothing_on_it():
    """Only area(box) = 80 pixels change in all, all outside the box: deletion stays 1
    (AUC 1, the worst), insertion stays 0 (AUC 0, the worst)."""
    out = run((~INSIDE).float())
    assert out['deletion_auc'] == pytest.approx(1.0) and out['insertion_auc'] == 0.0


def test_perturbed_images_and_auc():
    image = torch.arange(6.).reshape(1, 2, 3).expand(3, 2, 3)
    base = torch.full((3, 2, 3), -1.)
    order = torch.tensor([4, 0, 5, 1, 2, 3])
    dele = perturbed_images(image, order, [0, 2], base, 'deletion')
    assert torch.equal(dele[0], image)
    assert dele[1][0].flatten().tolist() == [-1, 1, 2, 3, -1, 5]
    ins = perturbed_images(image, order, [2], base, 'insertion')
    assert ins[0][0].flatten().tolist() == [0, -1, -1, -1, 4, -1]
    assert curve_auc([0, 1]) == 0.5 and curve_auc([1, 1, 1]) == 1.0
    assert math.isnan(curve_auc([1]))


def test_evidence_variants_hand_computed():
    boxes = torch.tensor([[5., 4., 15., 12.], [5., 4., 10., 12.], [0., 0., 30., 20.]])
    labels = torch.tensor([1, 0, 0])
    scores = torch.tensor([0.9, 0.8, 0.6])
    # class 0: box 1 IoU 0.5 (not > 0.5), box 2 IoU 80/600
    assert detection_evidence(boxes, labels, scores, BOX, 0, 'odam') == 0.0
    assert detection_evidence(boxes, labels, scores, BOX, 0, 'vps') == pytest.approx(0.4)
    assert detection_evidence(boxes, labels, scores, BOX, 0, 'class') == pytest.approx(0.8)
    assert detection_evidence(boxes, labels, scores, BOX, 0, 'iou') == pytest.approx(1.0)
    assert detection_evidence(boxes, labels, scores, BOX, 1, 'odam') == pytest.approx(0.9)
    assert detection_evidence(boxes[:0], labels[:0], scores[:0], BOX, 0) == 0.0


def test_extra_evidences_are_read_from_the_same_predictions():
    """Each extra evidence's curves equal a separate run with it as the evidence, from one
    set of forwards."""
    heat = torch.rand(HW, generator=torch.Generator().manual_seed(2))
    image, zeros = torch.ones(3, *HW), torch.zeros(3, *HW)
    calls = []

    def shifted_detector(images):  # a box off the target: IoU 60/100, so the evidences differ
        calls.append(len(images))
        return [(torch.tensor([[5., 4., 15., 10.]]), torch.tensor([0]),
                 img[0][INSIDE].mean().reshape(1)) for img in images]

    args = (shifted_detector, image, heat, BOX, 0, 80., zeros, zeros, 6)
    both = deletion_insertion(*args, evidence='vps', extra_evidences=('class', 'iou'))
    forwards = sum(calls)
    for e in ('vps', 'class', 'iou'):
        alone = deletion_insertion(*args, evidence=e)
        suffix = '' if e == 'vps' else f'_{e}'
        for key in ('deletion', 'insertion', 'deletion_auc', 'insertion_auc'):
            assert both[key + suffix] == alone[key]
    assert forwards == 2 * 7  # deletion and insertion, steps + 1 images each
    assert both['insertion_auc_iou'] != both['insertion_auc_class']
