"""Odam-NMS against mmcv's nms (its limit) and a brute-force transcription of Algorithm 1."""
import pytest
import torch
from mmcv.ops import nms

from odamtrain.models import batched_odam_nms, odam_nms


def _random(n, seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 5
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=g)
    if ties:
        scores = (scores * 5).round() / 5  # many equal scores
    maps = torch.rand(n, 12, 20, generator=g) ** 3
    return boxes, scores, maps


def brute_force(boxes, scores, maps, t_iou, t_low, t_high):
    """Algorithm 1 pair by pair, in double precision; maps resized to short edge 50."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    big = torch.nn.functional.interpolate(maps[:, None].double(), size=(50, 83),
                                          mode='bilinear', align_corners=False)[:, 0]
    keep = []
    for p in order:
        duplicate = False
        for d in keep:
            a, b = boxes[p].double(), boxes[d].double()
            iw = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
            ih = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
            inter = iw * ih
            union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
            iou = inter / union
            u, v = big[p].flatten(), big[d].flatten()
            corr = float(u @ v) / (float(u.norm()) * float(v.norm()) or 1.0)
            if (iou > t_iou and corr > t_low) or (iou <= t_iou and corr > t_high):
                duplicate = True
                break
        if not duplicate:
            keep.append(p)
    return keep


@pytest.mark.parametrize('seed', range(8))
@pytest.mark.parametrize('ties', [False, True])
def test_limit_is_exactly_mmcv_nms(seed, ties):
    boxes, scores, maps = _random(200, seed, ties)
    for thr in (0.3, 0.5, 0.7):
        expected = nms(boxes, scores, thr)[1]
        got = odam_nms(boxes, scores, maps, thr, corr_low=-1.0, corr_high=1.01)
        assert torch.equal(got, expected), (seed, thr)
        assert got.dtype == torch.int64


def test_iou_exactly_at_threshold_is_not_suppressed():
    # IoU of the pair is exactly 0.5 (50 / 100): strict '>' keeps both, like mmcv
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 5.5]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    maps = torch.ones(3, 4, 4)
    assert nms(boxes, scores, 0.5)[1].tolist() == [0, 1]
    assert odam_nms(boxes, scores, maps, 0.5, -1.0, 1.01).tolist() == [0, 1]
    # with identical maps (corr 1 > T_h) Odam-NMS removes even the non-overlapping ones
    assert odam_nms(boxes, scores, maps, 0.5, 0.2, 0.8).tolist() == [0]


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('limits', [(0.5, 0.2, 0.8), (0.6, 0.3, 0.7), (0.4, 0.5, 0.9)])
def test_equals_brute_force_algorithm_1(seed, limits):
    boxes, scores, maps = _random(60, seed)
    got = odam_nms(boxes, scores, maps, *limits)
    assert got.tolist() == brute_force(boxes, scores, maps, *limits)


def test_hand_made_crowd():
    """Two people overlapping (IoU 0.6) with distinct maps are both kept (plain NMS loses
    one); a duplicate box of the first with a similar map is removed; a far box with the
    first's map (corr > T_h) is removed too."""
    boxes = torch.tensor([[0.0, 0, 10, 20], [2.5, 0, 12.5, 20], [0.5, 0, 10.5, 20],
                          [50, 50, 60, 70]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    a = torch.zeros(20, 30)
    a[:, :10] = 1  # person A's map on the left
    b = torch.zeros(20, 30)
    b[:, 15:] = 1  # person B's map on the right: corr(A, B) = 0
    maps = torch.stack([a, b, a * 0.9 + b * 0.1, a])
    assert nms(boxes, scores, 0.5)[1].tolist() == [0, 3]
    assert odam_nms(boxes, scores, maps).tolist() == [0, 1]


def test_empty_and_classes():
    empty = odam_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 5))
    assert empty.dtype == torch.int64 and empty.numel() == 0
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8])
    maps = torch.ones(2, 5, 5)
    assert odam_nms(boxes, scores, maps).tolist() == [0]
    dets, keep = batched_odam_nms(boxes, scores, maps, torch.tensor([0, 1]),
                                  dict(type='odam_nms', iou_threshold=0.5, corr_low=0.2,
                                       corr_high=0.8))
    assert keep.tolist() == [0, 1]  # different classes never suppress each other
    torch.testing.assert_close(dets, torch.cat([boxes, scores[:, None]], 1))


@pytest.mark.parametrize('seed', range(4))
def test_blocked_walk_equals_the_all_pairs_walk_with_classes(seed):
    """Several blocks of the walk, three classes, ties in the scores, all-zero maps: the
    keep set of the all-pairs formulation (every pair's IoU and correlation, then the
    greedy walk)."""
    boxes, scores, maps = _random(450, seed, ties=True)
    maps[::7] = 0  # corr 0 with everything
    labels = torch.randint(3, (450,), generator=torch.Generator().manual_seed(seed))
    order = scores.sort(0, descending=True)[1]
    b, lab = boxes[order], labels[order]
    v = torch.nn.functional.interpolate(maps[order][:, None], size=(50, 83), mode='bilinear',
                                        align_corners=False).flatten(1)
    v = v / v.norm(dim=1, keepdim=True).clamp(min=1e-12)
    corr = v @ v.T
    iou = all_pairs_iou(b)
    duplicate = (((iou > 0.5) & (corr > 0.2)) | ((iou <= 0.5) & (corr > 0.8))) & (
        lab[:, None] == lab[None, :])
    removed = torch.zeros(450, dtype=torch.bool)
    keep = []
    for i in range(450):
        if not removed[i]:
            keep.append(int(order[i]))
            removed |= duplicate[i]
    assert odam_nms(boxes, scores, maps, 0.5, 0.2, 0.8, labels=labels).tolist() == keep
    assert len(keep) > 100  # the walk crosses several blocks of kept boxes


def all_pairs_iou(boxes):
    """All-pairs IoU written out (x1y1x2y2, offset 0)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    iw = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None])).clamp(min=0)
    ih = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None])).clamp(min=0)
    inter = iw * ih
    return inter / (area[:, None] + area[None] - inter)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('thr', [0.0, 0.3, 0.7, 1.1])
def test_map_score_threshold_keeps_odam_nms_above_it_and_nms_below(seed, thr):
    """map_score_thr: the boxes scoring >= it are kept exactly as by Odam-NMS; each box
    below it is kept iff no kept box overlaps it by IoU > T_iou (its map is never read:
    NaN there changes nothing); 0 is Odam-NMS, above every score it is mmcv's nms."""
    boxes, scores, maps = _random(300, seed, ties=True)
    low = scores < thr
    maps[low] = float('nan')
    got = odam_nms(boxes, scores, maps, 0.5, 0.2, 0.8, map_score_thr=thr).tolist()
    full = odam_nms(boxes, scores, torch.nan_to_num(maps), 0.5, 0.2, 0.8).tolist()
    assert [i for i in got if not low[i]] == [i for i in full if not low[i]]
    kept = [i for i in got if not low[i]]
    iou = all_pairs_iou(boxes)
    order = scores.sort(0, descending=True)[1].tolist()
    for i in (i for i in order if low[i]):
        if not any(iou[k, i] > 0.5 for k in kept):
            kept.append(i)
    assert got == kept
    if thr > 1:
        assert got == nms(boxes, scores, 0.5)[1].tolist()
