"""Which prediction finds a target, and which GT objects a detector gets wrong: hand-computed
small cases."""
import pytest
import torch

from odamtrain.evaluation.functional import best_candidates, failure_sets, match_detections

T = torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.]])
BOXES = torch.tensor([[0., 0., 10., 5.], [20., 20., 30., 30.], [0., 0., 10., 10.]])


def test_best_candidates_hand_computed():
    index, value = best_candidates(BOXES, torch.tensor([0, 1, 1]),
                                   torch.tensor([0.8, 0.5, 0.9]), T, torch.tensor([0, 1]))
    # target 0 (class 0): box 0 (IoU .5, .8) -> .4; box 2 fits exactly but is class 1
    # target 1 (class 1): box 1 (IoU 1, .5) -> .5
    assert index.tolist() == [0, 1]
    torch.testing.assert_close(value, torch.tensor([0.4, 0.5]))
    # with box 2 of class 0, it wins target 0 (IoU 1 x .9)
    index, value = best_candidates(BOXES, torch.tensor([0, 1, 0]),
                                   torch.tensor([0.8, 0.5, 0.9]), T, torch.tensor([0, 1]))
    assert index.tolist() == [2, 1]
    torch.testing.assert_close(value, torch.tensor([0.9, 0.5]))


def test_best_candidates_without_predictions_or_targets():
    index, value = best_candidates(BOXES[:0], torch.tensor([], dtype=torch.long),
                                   torch.tensor([]), T, torch.tensor([0, 1]))
    assert index.tolist() == [0, 0] and value.tolist() == [0, 0]
    index, value = best_candidates(BOXES, torch.tensor([0, 1, 1]), torch.ones(3), T[:0],
                                   torch.tensor([], dtype=torch.long))
    assert index.shape == (0,) and value.shape == (0,)


def test_failure_sets_hand_computed():
    gt = torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.], [40., 40., 50., 50.],
                       [60., 0., 70., 10.]])
    gt_labels = torch.tensor([0, 1, 0, 0])
    det = torch.tensor([[0., 0., 10., 10.],     # GT 0, right class, score .9
                        [20., 20., 30., 31.],   # GT 1 (IoU 10/11), wrong class
                        [40., 40., 50., 50.],   # GT 2, right class but score .2
                        [60., 0., 70., 5.]])    # GT 3 only at IoU .5 (not > .5)
    labels = torch.tensor([0, 0, 0, 0])
    scores = torch.tensor([0.9, 0.8, 0.2, 0.9])
    missed, wrong = failure_sets(det, labels, scores, gt, gt_labels, score_thr=0.3)
    assert missed.tolist() == [2, 3] and wrong.tolist() == [1]
    # a lower threshold finds GT 2; a higher one misses everything
    missed, wrong = failure_sets(det, labels, scores, gt, gt_labels, score_thr=0.1)
    assert missed.tolist() == [3] and wrong.tolist() == [1]
    missed, wrong = failure_sets(det, labels, scores, gt, gt_labels, score_thr=0.95)
    assert missed.tolist() == [0, 1, 2, 3] and wrong.tolist() == []
    # a right-class detection next to the wrong one makes GT 1 found
    det2 = torch.cat([det, torch.tensor([[20., 20., 30., 30.]])])
    missed, wrong = failure_sets(det2, torch.cat([labels, torch.tensor([1])]),
                                 torch.cat([scores, torch.tensor([0.5])]), gt, gt_labels, 0.3)
    assert missed.tolist() == [2, 3] and wrong.tolist() == []
    missed, wrong = failure_sets(det[:0], labels[:0], scores[:0], gt, gt_labels, 0.3)
    assert missed.tolist() == [0, 1, 2, 3] and wrong.tolist() == []


def _box(x, w=10.):
    return [x, 0., x + w, 10.]


@pytest.mark.parametrize('case', [
    # (name, det boxes, det scores, GT boxes, iou_thr, det_index, gt_index)
    ('IoU exactly at the threshold is not matched (> thr)',
     [_box(0, 10)], [0.9], [_box(0, 20)], 0.5, [], []),
    ('IoU just above the threshold is matched',
     [_box(0, 10.1)], [0.9], [_box(0, 20)], 0.5, [0], [0]),
    ('one GT, two detections: the higher score takes it, the other stays unmatched',
     [_box(0), _box(1)], [0.3, 0.8], [_box(0)], 0.5, [1], [0]),
    ('score ties: the lower detection index goes first',
     [_box(1), _box(0)], [0.5, 0.5], [_box(0)], 0.5, [0], [0]),
    ('a detection takes its best free GT once its best is taken',
     [_box(0), _box(1)], [0.9, 0.8], [_box(0), _box(3)], 0.5, [0, 1], [0, 1]),
    ('a detection whose best GT is taken and no other overlaps enough: unmatched',
     [_box(0), _box(1)], [0.9, 0.8], [_box(0), _box(30)], 0.5, [0], [0]),
    ('output in decreasing score order',
     [_box(0), _box(30)], [0.2, 0.7], [_box(0), _box(30)], 0.5, [1, 0], [1, 0]),
    ('no detections', [], [], [_box(0)], 0.5, [], []),
    ('no GT', [_box(0)], [0.9], [], 0.5, [], []),
], ids=lambda c: c[0] if isinstance(c, tuple) else None)
def test_match_detections_hand_computed(case):
    """IoUs by hand: [0, 10] vs [0, 20] is 10/20 = 0.5 exactly; [0, 10.1] vs [0, 20] is
    0.505; boxes of width 10 shifted by 1 or 2 px overlap at 9/11 or 8/12 (> 0.5), so the
    detection at 1 prefers GT [0, 10] (9/11) to GT [3, 13] (8/12)."""
    _, det, scores, gt, thr, want_det, want_gt = case
    det_index, gt_index = match_detections(torch.tensor(det).reshape(-1, 4),
                                           torch.tensor(scores), torch.tensor(gt).reshape(-1, 4),
                                           thr)
    assert det_index.tolist() == want_det and gt_index.tolist() == want_gt
    assert det_index.dtype == gt_index.dtype == torch.long
