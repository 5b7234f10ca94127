"""Odam-Train: the pair losses against hand-computed values and per-image sums, gradcheck,
the heads' maps against per-prediction autograd, and the losses' effect on training."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmdet.models.utils import unpack_gt_instances
from mmdet.structures.bbox import bbox_overlaps

from odamtrain.engine import OdamTrainSwitchHook
from odamtrain.explain import DenseTrainStep, build_adapter
from odamtrain.explain.adapters import StandardRoIAdapter
from odamtrain.explain.heatmap import (
    SIGMA_PER_BOX_SIZE,
    box_sigma,
    odam_heatmap,
    paste_roi_maps,
    resample_maps,
)
from odamtrain.models import (
    OdamLossSettings,
    best_per_object,
    cap_positives,
    odam_loss_dict,
    odam_pair_losses,
    top_per_object,
)

from .conftest import TEST_DEVICE
from .helpers.oracles import frozen_norm_stats
from .odam_fixtures import build_detector, train_batch
from .zoo import build_zoo_detector

EPS = 1e-4

# 2 GT objects, 4 predictions with 2-value "maps": A = {p0 (IoU .9), p1 (.6)}, B = {p2 (.5),
# p3 (.8)}: best A = p0, best B = p3.
MAPS = torch.tensor([[1., 0.], [1., 1.], [0., 1.], [1., 2.]], dtype=torch.float64)
GT = torch.tensor([0, 0, 1, 1])
IOUS = torch.tensor([0.9, 0.6, 0.5, 0.8], dtype=torch.float64)


def test_hand_computed_two_objects_four_predictions():
    pair = odam_pair_losses(MAPS, GT, IOUS, eps=EPS)
    # consistency: (p0, p1) cos 1/sqrt2; (p3, p2) cos 2/sqrt5
    con = -math.log(1 / math.sqrt(2)) - math.log(2 / math.sqrt(5))
    # separation: p0 vs p2 (cos 0 -> eps), p0 vs p3 (1/sqrt5); p3 vs p0 (1/sqrt5), p3 vs p1
    # (3/sqrt10)
    sep = (-math.log(1 - EPS) - 2 * math.log(1 - 1 / math.sqrt(5))
           - math.log(1 - 3 / math.sqrt(10)))
    assert pair.consistency.item() == pytest.approx(con, rel=1e-12)
    assert pair.separation.item() == pytest.approx(sep, rel=1e-12)
    assert (int(pair.num_consistency), int(pair.num_separation)) == (2, 4)
    losses = odam_loss_dict(MAPS, GT, IOUS, None, loss_weight=0.5, eps=EPS)
    assert losses['loss_odam_con'].item() == pytest.approx(0.5 * con / 6, rel=1e-12)
    assert losses['loss_odam_sep'].item() == pytest.approx(0.5 * sep / 6, rel=1e-12)


def test_best_per_object_is_the_highest_iou_lowest_index_on_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 30, (1,), generator=g))
        obj = torch.randint(0, 5, (n,), generator=g)
        obj = torch.unique(obj, return_inverse=True)[1]
        ious = torch.randint(0, 4, (n,), generator=g).double() / 4  # many ties
        best = best_per_object(obj, ious)
        for o in range(int(obj.max()) + 1):
            members = [i for i in range(n) if obj[i] == o]
            top = max(float(ious[i]) for i in members)
            assert int(best[o]) == min(i for i in members if float(ious[i]) == top)
    # the loss follows the best: making p1 the best of A changes the reference of A
    ious = IOUS.clone()
    ious[1] = 0.95
    pair = odam_pair_losses(MAPS, GT, ious, eps=EPS)
    con = -math.log(1 / math.sqrt(2)) - math.log(2 / math.sqrt(5))  # symmetric in A's pair
    sep = (-math.log(1 - 1 / math.sqrt(2)) - math.log(1 - 3 / math.sqrt(10))  # p1 vs p2, p3
           - math.log(1 - 3 / math.sqrt(10)) - math.log(1 - 1 / math.sqrt(5)))  # p3 vs p1, p0
    assert pair.consistency.item() == pytest.approx(con, rel=1e-12)
    assert pair.separation.item() == pytest.approx(sep, rel=1e-12)


def test_pairs_never_cross_images():
    """A batch of 2 images with the same GT indices: the losses are the sums of the
    per-image losses (a cross-image pair would change them: image 1's maps are close to
    image 0's other object)."""
    maps1 = torch.tensor([[0., 1.], [0.1, 1.], [1., 0.2]], dtype=torch.float64)
    gt1, ious1 = torch.tensor([0, 0, 1]), torch.tensor([0.7, 0.9, 0.8], dtype=torch.float64)
    a = odam_pair_losses(MAPS, GT, IOUS, eps=EPS)
    b = odam_pair_losses(maps1, gt1, ious1, eps=EPS)
    both = odam_pair_losses(torch.cat([MAPS, maps1]), torch.cat([GT, gt1]),
                            torch.cat([IOUS, ious1]), torch.tensor([0] * 4 + [1] * 3), eps=EPS)
    assert both.consistency.item() == pytest.approx((a.consistency + b.consistency).item())
    assert both.separation.item() == pytest.approx((a.separation + b.separation).item())
    assert int(both.num_separation) == int(a.num_separation) + int(b.num_separation) == 4 + 3
    # interleaved order and shuffled image ids give the same
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    shuffled = odam_pair_losses(torch.cat([MAPS, maps1])[perm], torch.cat([GT, gt1])[perm],
                                torch.cat([IOUS, ious1])[perm],
                                torch.tensor([5] * 4 + [2] * 3)[perm], eps=EPS)
    assert shuffled.separation.item() == pytest.approx(both.separation.item())
    assert shuffled.consistency.item() == pytest.approx(both.consistency.item())


def test_gradcheck_wrt_maps():
    g = torch.Generator().manual_seed(1)
    maps = (torch.rand(7, 3, 4, generator=g, dtype=torch.float64) + 0.1).requires_grad_(True)
    gt = torch.tensor([0, 0, 1, 1, 1, 0, 0])
    img = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    ious = torch.rand(7, generator=g, dtype=torch.float64)

    def f(m):
        out = odam_loss_dict(m, gt, ious, img, loss_weight=0.5, eps=EPS)
        return out['loss_odam_con'], out['loss_odam_sep']

    assert torch.autograd.gradcheck(f, (maps,))


@pytest.mark.parametrize('case', ['empty', 'one positive', 'one object', 'zero maps'])
def test_finite_in_degenerate_cases(case):
    maps = {'empty': torch.zeros(0, 4, 4), 'one positive': torch.rand(1, 4, 4),
            'one object': torch.rand(3, 4, 4), 'zero maps': torch.zeros(4, 4, 4)}[case]
    maps.requires_grad_(True)
    n = len(maps)
    gt = torch.tensor([0, 0, 1, 1])[:n] if case == 'zero maps' else torch.zeros(n, dtype=int)
    out = odam_loss_dict(maps, gt, torch.rand(n), None, loss_weight=0.5, eps=EPS)
    total = out['loss_odam_con'] + out['loss_odam_sep']
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(maps.grad).all()
    if case in ('empty', 'one positive'):
        assert total.item() == 0
    if case == 'one object':
        assert out['loss_odam_sep'].item() == 0 and out['loss_odam_con'].item() > 0
    if case == 'zero maps':  # cos 0 is clamped to eps: -log(eps) per consistency pair
        # 2 consistency + 4 separation pairs
        assert out['loss_odam_con'].item() == pytest.approx(0.5 * 2 * -math.log(EPS) / 6)


def test_cap_positives_keeps_every_best_and_at_most_k_per_image():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 3, (500,), generator=g)
    gt = torch.randint(0, 40, (500,), generator=g)
    ious = torch.rand(500, generator=g)
    torch.manual_seed(0)
    keep = cap_positives(img, gt, ious, 50)
    assert (keep.diff() > 0).all()
    for b in range(3):
        n_b = int((img == b).sum())
        assert int((img[keep] == b).sum()) == min(50, n_b)
    obj = torch.unique(torch.stack([img, gt], 1), dim=0, return_inverse=True)[1]
    assert set(best_per_object(obj, ious).tolist()) <= set(keep.tolist())
    torch.manual_seed(0)
    assert torch.equal(cap_positives(img, gt, ious, 50), keep)  # seeded: reproducible
    assert torch.equal(cap_positives(img, gt, ious, 1000), torch.arange(500))


def test_top_per_object_hand_computed():
    """Objects 0 (IoUs .9 .2 .5 .5) and 1 (.3 .8), k = 2: object 0 keeps .9 and the first
    .5 (ties: the lower index), object 1 both."""
    obj = torch.tensor([0, 0, 1, 0, 0, 1])
    ious = torch.tensor([0.9, 0.2, 0.3, 0.5, 0.5, 0.8])
    assert top_per_object(obj, ious, 2).tolist() == [True, False, True, True, False, True]
    assert top_per_object(obj, ious, 1).tolist() == [True, False, False, False, False, True]
    assert top_per_object(obj, ious, 9).all()


def test_cap_positives_per_object_against_brute_force():
    """Per object its k highest-IoU positives (a sort per object, written out), then the
    per-image cap keeps every best."""
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 2, (300,), generator=g)
    gt = torch.randint(0, 12, (300,), generator=g)
    ious = torch.rand(300, generator=g)
    for k in (1, 3):
        expected = []
        for b, o in {(int(b), int(o)) for b, o in zip(img, gt)}:
            idx = ((img == b) & (gt == o)).nonzero()[:, 0]
            expected += idx[torch.argsort(ious[idx], descending=True)[:k]].tolist()
        keep = cap_positives(img, gt, ious, 1000, max_per_object=k)
        assert keep.tolist() == sorted(expected)
        capped = cap_positives(img, gt, ious, 15, max_per_object=k)  # 12 objects per image
        assert set(capped.tolist()) <= set(expected)
        for b in (0, 1):
            allowed = sum(int(img[i]) == b for i in expected)
            assert int((img[capped] == b).sum()) == min(15, allowed)
        obj = torch.unique(torch.stack([img, gt], 1), dim=0, return_inverse=True)[1]
        assert set(best_per_object(obj, ious).tolist()) <= set(capped.tolist())


def test_config_defaults_and_unknown_keys():
    settings = OdamLossSettings.from_config
    assert settings(None, 0.5) is None
    assert settings(dict(second_order=True), 0.2) == OdamLossSettings(
        loss_weight=0.2, second_order=True, max_positives=300, max_positives_per_object=None,
        map_stride=16, eps=1e-4, begin_epoch=0)
    with pytest.raises(ValueError, match='unknown key.*weight'):
        settings(dict(weight=1.0), 0.5)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match='begin_epoch must be an int >= 0'):
            settings(dict(begin_epoch=bad), 0.5)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match='max_positives_per_object must be None or an'):
            settings(dict(max_positives_per_object=bad), 0.5)
    for key, bad in (('loss_weight', '1'), ('second_order', 1), ('max_positives', 0),
                     ('map_stride', 0), ('eps', 0.0)):
        with pytest.raises(ValueError, match=f'odam_loss: {key} must be'):
            settings({key: bad}, 0.5)


def test_resample_maps_keeps_cell_centres_aligned():
    """A ramp a * x + b sampled at cell centres (j + 0.5) * s stays that ramp at the new
    cell centres (interior cells; bilinear is exact on linear functions)."""
    for stride in (8, 32):
        w = 256 // stride
        xs = (torch.arange(w, dtype=torch.float64) + 0.5) * stride
        maps = (0.3 * xs + 2).expand(1, 4, w).clone()
        out = resample_maps(maps, stride, 16, (3, 256 // 16 + 2))  # wider: zero-padded
        want = 0.3 * (torch.arange(256 // 16, dtype=torch.float64) + 0.5) * 16 + 2
        torch.testing.assert_close(out[0, 1, 1:-1][:14], want[1:15])
        assert (out[:, :, 256 // 16:] == 0).all()


# ---------------------------------------------------------------------------------- heads

def fcos(second_order=False, center_sampling=True):
    return build_detector('configs/fcos_tiny_fpn_synthetic.py', cfg_options={
        'model.bbox_head.center_sampling': center_sampling,
        'model.train_cfg': dict(odam_loss=dict(second_order=second_order))}).train()


def rcnn(second_order=False):
    return build_detector('configs/faster-rcnn_tiny_fpn_synthetic.py', cfg_options={
        'model.train_cfg.odam_loss': dict(second_order=second_order)}).train()


def fcos_train_maps(model, inputs, samples):
    """The forward, GT, capped positives and their maps of one FCOS Odam-Train step."""
    cfg, adapter = model.bbox_head.odam_loss, build_adapter(model)
    gts, _, metas = unpack_gt_instances(samples)
    fwd = adapter.forward_features(model.extract_feat(inputs), metas)
    step = DenseTrainStep(fwd, None, gts, metas)
    pos = adapter.train_positives(step)
    pos = pos[cap_positives(pos.img, pos.gt_index, pos.ious, cfg.max_positives,
                            cfg.max_positives_per_object)]
    grid = tuple(math.ceil(s / cfg.map_stride) for s in metas[0]['batch_input_shape'])
    return fwd, gts, pos, adapter.train_maps(step, pos, grid, cfg.map_stride, cfg.second_order)


@pytest.mark.parametrize('center_sampling', [False, True])
def test_fcos_positives_carry_their_assigned_gt(center_sampling):
    """Brute-force FCOS assignment (without centre sampling: the smallest GT box containing
    the point whose largest side distance fits the level's range); with centre sampling the
    indexed GT box rebuilds the regression target."""
    model = fcos(center_sampling=center_sampling)
    inputs, samples = train_batch(model, seeds=(0, 1))
    head = model.bbox_head
    gts, _, metas = unpack_gt_instances(samples)
    with torch.no_grad():
        adapter = build_adapter(model)
        fwd = adapter.forward_features(model.extract_feat(inputs), metas)
        pos = adapter.train_positives(DenseTrainStep(fwd, None, gts, metas))
    assert len(pos) > 20
    labels, targets = head.get_targets(head.prior_generator.grid_priors(
        [f.shape[-2:] for f in fwd.feats], device=inputs.device), gts)
    for p in range(len(pos)):
        b, lvl, loc = int(pos.img[p]), int(pos.level[p]), int(pos.prior[p])
        boxes = gts[b].bboxes
        # the indexed GT box rebuilds FCOS's own regression target of the location
        w = fwd.feats[lvl].shape[-1]
        off = head.prior_generator.offset  # mmdet's point of a location
        px, py = (loc % w + off) * head.strides[lvl], (loc // w + off) * head.strides[lvl]
        g = boxes[pos.gt_index[p]]
        target = targets[lvl].view(len(gts), -1, 4)[b, loc] * head.strides[lvl]
        torch.testing.assert_close(torch.stack([px - g[0], py - g[1], g[2] - px, g[3] - py]),
                                   target, atol=1e-3, rtol=0)
        if center_sampling:
            continue
        off = head.prior_generator.offset  # mmdet's point of a location
        px, py = (loc % w + off) * head.strides[lvl], (loc // w + off) * head.strides[lvl]
        d = torch.stack([px - boxes[:, 0], py - boxes[:, 1], boxes[:, 2] - px,
                         boxes[:, 3] - py], 1)
        lo, hi = head.regress_ranges[lvl]
        ok = (d.min(1).values > 0) & (d.max(1).values >= lo) & (d.max(1).values <= hi)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).masked_fill(~ok, 1e12)
        assert int(pos.gt_index[p]) == int(area.argmin())
    assigned = torch.stack([gts[int(i)].bboxes[int(j)] for i, j in zip(pos.img, pos.gt_index)])
    ious = bbox_overlaps(pos.bboxes, assigned, is_aligned=True)
    torch.testing.assert_close(pos.ious, ious)


def test_fcos_train_maps_equal_per_prediction_autograd():
    """Each positive's map = ODAM of per-prediction autograd (GN statistics held constant,
    train-mode head, logit of the assigned class), Phi by its predicted box, on the stride-16
    grid."""
    model = fcos()
    inputs, samples = train_batch(model, seeds=(0, 1))
    head = model.bbox_head
    torch.manual_seed(0)
    fwd, _, pos, maps = fcos_train_maps(model, inputs, samples)
    pick = torch.randperm(len(pos), generator=torch.Generator().manual_seed(0))[:12]
    for p in pick.tolist():
        b, lvl, loc, label = (int(pos.img[p]), int(pos.level[p]), int(pos.prior[p]),
                              int(pos.labels[p]))
        a = fwd.feats[lvl].detach()[b:b + 1].clone().requires_grad_(True)
        with frozen_norm_stats():
            cls, _, _ = head.forward_single(a, head.scales[lvl], head.strides[lvl])
        w = a.shape[-1]
        g, = torch.autograd.grad(cls[0, label, loc // w, loc % w], a)
        sigma = box_sigma(pos.bboxes[p:p + 1], head.strides[lvl])
        level_map = odam_heatmap(g, a.detach(), sigma)
        want = resample_maps(level_map, head.strides[lvl], 16, maps.shape[-2:])[0]
        torch.testing.assert_close(maps[p].detach(), want, rtol=1e-4,
                                   atol=1e-6 * float(want.abs().max()))
    assert maps.shape[-2:] == tuple(math.ceil(s / 16) for s in inputs.shape[-2:])


def test_rcnn_train_maps_equal_per_roi_autograd(monkeypatch):
    model = rcnn()
    inputs, samples = train_batch(model, seeds=(0, 1))
    head = model.roi_head
    captured = {}
    original = StandardRoIAdapter.train_maps

    def capture(adapter, step, pos, *args):
        maps = original(adapter, step, pos, *args)
        captured.update(pos=pos, maps=maps, feats=step.bbox_results['bbox_feats'],
                        sampling=step.sampling_results)
        return maps

    monkeypatch.setattr(StandardRoIAdapter, 'train_maps', capture)
    torch.manual_seed(0)
    losses = model.loss(inputs, samples)
    assert {'loss_odam_con', 'loss_odam_sep'} <= set(losses)
    pos, maps, feats = captured['pos'], captured['maps'], captured['feats']
    from mmdet.structures.bbox import bbox2roi
    rois = bbox2roi([r.priors for r in captured['sampling']])
    for p in range(0, len(pos), max(1, len(pos) // 8)):
        r = int(pos.roi[p])
        a = feats.detach()[r:r + 1].clone().requires_grad_(True)
        cls, _ = head.bbox_head(a)
        g, = torch.autograd.grad(cls[0, int(pos.labels[p])], a)
        m = odam_heatmap(g, a.detach(), a.new_tensor([SIGMA_PER_BOX_SIZE * 7]))
        # pasted into the RoI on the stride-16 grid: compare at the RoI's cells
        want = paste_roi_maps(m, rois[r:r + 1, 1:] / 16, maps.shape[-2:])[0]
        torch.testing.assert_close(maps[p].detach(), want, rtol=1e-4,
                                   atol=1e-6 * float(want.abs().max()))
        assert int(pos.img[p]) == int(rois[r, 0])
    # each image's positives point at that image's GT (pairs are formed per image)
    for res, b in zip(captured['sampling'], range(2)):
        assert sorted(pos.gt_index[pos.img == b].tolist()) == sorted(
            res.pos_assigned_gt_inds.tolist())


def test_fcos_positives_per_object_are_its_best_of_all():
    """max_positives_per_object=2 in the config: the head compares, of the positives the
    uncapped head compares (the same weights and batch), each person's 2 of highest IoU."""
    def positives(cap):
        model = build_detector('configs/fcos_tiny_fpn_synthetic.py', cfg_options={
            'model.train_cfg': dict(odam_loss=dict(max_positives_per_object=cap))}).train()
        inputs, samples = train_batch(model, seeds=(0, 1))
        return fcos_train_maps(model, inputs, samples)[2]
    every, capped = positives(None), positives(2)
    assert len(capped) < len(every)
    kept = set()
    for key in {(int(b), int(g)) for b, g in zip(every.img, every.gt_index)}:
        idx = ((every.img == key[0]) & (every.gt_index == key[1])).nonzero()[:, 0]
        top = idx[torch.argsort(every.ious[idx], descending=True, stable=True)[:2]]
        kept |= {(key, round(float(every.ious[i]), 6)) for i in top}
    assert {((int(b), int(g)), round(float(u), 6)) for b, g, u in
            zip(capped.img, capped.gt_index, capped.ious)} == kept


@pytest.mark.parametrize('detector', ['fcos', 'rcnn'])
def test_second_order_trains_the_head_detached_does_not(detector):
    results = {}
    for second_order in (False, True):
        model = fcos(second_order) if detector == 'fcos' else rcnn(second_order)
        inputs, samples = train_batch(model, seeds=(0, 1))
        torch.manual_seed(0)
        losses = model.loss(inputs, samples)
        (losses['loss_odam_con'] + losses['loss_odam_sep']).backward()
        if detector == 'fcos':
            head = model.bbox_head
            weights = [head.conv_cls.weight, head.cls_convs[0].conv.weight]
            feature = model.neck.fpn_convs[0].conv.weight
        else:
            head = model.roi_head.bbox_head
            weights = [head.fc_cls.weight, head.shared_fcs[0].weight]
            feature = model.neck.fpn_convs[0].conv.weight
        results[second_order] = [w.grad for w in weights], feature.grad.clone()
    assert all(g is None for g in results[False][0])
    assert all(g is not None and g.abs().sum() > 0 for g in results[True][0])
    # the features get the same gradient either way (dY/dA does not depend on A smoothly)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-4, atol=1e-8)
    assert results[False][1].abs().sum() > 0


@pytest.mark.parametrize('detector,second_order', [('fcos', False), ('fcos', True),
                                                    ('rcnn', False)])
def test_training_on_a_fixed_batch_lowers_the_odam_losses(detector, second_order):
    """20 Adam steps on L_con + L_sep alone (a wrong sign or a broken graph anywhere from the
    maps back to the backbone would not lower it)."""
    model = fcos(second_order) if detector == 'fcos' else rcnn(second_order)
    inputs, samples = train_batch(model, seeds=(0, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(20):
        torch.manual_seed(0)  # the same capped positives / sampled RoIs every step
        losses = model.loss(inputs, samples)
        loss = losses['loss_odam_con'] + losses['loss_odam_sep']
        history.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.mean(history[-3:]) < 0.8 * np.mean(history[:3]), history


def test_head_without_fast_towers_is_refused():
    with pytest.raises(ValueError, match='odam_loss: .*DCN'):
        build_detector('configs/fcos_tiny_fpn_synthetic.py', cfg_options={
            'model.train_cfg': dict(odam_loss={}), 'model.bbox_head.dcn_on_last_conv': True})
    with pytest.raises(ValueError, match="unknown key.*'weight'"):
        build_detector('configs/fcos_tiny_fpn_synthetic.py', cfg_options={
            'model.train_cfg': dict(odam_loss=dict(weight=1))})


# ------------------------------------------------ the zoo: anchor heads and Cascade R-CNN
def zoo_training(name, num_gt):
    """A zoo detector in training mode with Odam-Train, and a batch of 2 images with
    ``num_gt`` GT boxes each (class 1)."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from odamtrain.models import install_odam
    model = build_zoo_detector(name, train=True)
    model.train_cfg['odam_loss'] = dict(max_positives=300)
    install_odam(model)
    g = torch.Generator().manual_seed(num_gt)
    inputs = torch.randn(2, 3, 128, 160, generator=g)
    samples = []
    for _ in range(2):
        xy = torch.rand(num_gt, 2, generator=g) * torch.tensor([110.0, 80])
        wh = torch.rand(num_gt, 2, generator=g) * 40 + 12
        s = DetDataSample(metainfo=dict(img_shape=(128, 160), ori_shape=(128, 160),
                                        batch_input_shape=(128, 160), pad_shape=(128, 160),
                                        scale_factor=(1.0, 1.0)))
        s.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                      labels=torch.ones(num_gt, dtype=torch.long))
        samples.append(s.to(TEST_DEVICE))
    return model, inputs.to(TEST_DEVICE), samples


@pytest.mark.parametrize('name', ['retinanet', 'atss', 'gfl', 'cascade-rcnn',
                                  'double-head-rcnn', 'sabl-faster-rcnn', 'sabl-cascade-rcnn'])
@pytest.mark.parametrize('num_gt', [0, 1, 6])
def test_zoo_odam_losses_are_finite_and_reach_the_fpn(name, num_gt):
    model, inputs, samples = zoo_training(name, num_gt)
    losses = model.loss(inputs, samples)
    keys = [k for k in losses if 'loss_odam' in k]
    assert len(keys) == (6 if 'cascade' in name else 2)  # Cascade: every stage
    total = sum(losses[k] for k in keys)
    assert torch.isfinite(total)
    if num_gt == 0:  # no positive, no pair: zero
        assert float(total) == 0
        return
    total.backward()
    assert float(total) > 0 and model.neck.fpn_convs[0].conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('name', ['retinanet', 'atss', 'gfl'])
def test_anchor_positives_are_the_samplers(name):
    """The positives' flat anchors are where the head's own targets carry their GT's label,
    and their GT index is the sampler's (the anchors inside the image map back)."""
    model, inputs, samples = zoo_training(name, 6)
    head = model.bbox_head
    adapter = build_adapter(model)
    gts, ignore, metas = unpack_gt_instances(samples)
    fwd = adapter.forward_features(model.extract_feat(inputs), metas)
    with adapter.recording_positives() as recorded:
        head.loss_by_feat(*fwd.outputs, gts, metas, ignore)
    pos = adapter.train_positives(DenseTrainStep(fwd, recorded, gts, metas))
    assert len(pos) > 5
    sizes = [f.shape[-2:] for f in fwd.feats]
    anchors, valid = head.get_anchors(sizes, metas, device=inputs.device)
    targets = head.get_targets(anchors, valid, gts, metas, ignore)
    labels = targets[1] if name in ('atss', 'gfl') else targets[0]  # per level (B, n_l)
    for p in range(len(pos)):
        b, lvl, prior = int(pos.img[p]), int(pos.level[p]), int(pos.prior[p])
        assert int(labels[lvl][b, prior]) == int(gts[b].labels[pos.gt_index[p]])
    counts = [int((lab < head.num_classes).sum()) for lab in torch.cat(labels, 1)]
    assert counts == [int((pos.img == b).sum()) for b in range(2)]
    # their boxes are the head's own decoding of the positive anchors
    ious = bbox_overlaps(pos.bboxes, torch.stack([gts[int(i)].bboxes[int(j)] for i, j in
                                                  zip(pos.img, pos.gt_index)]), is_aligned=True)
    torch.testing.assert_close(pos.ious, ious)


@pytest.mark.parametrize('name, why', [('autoassign', 'get_targets'), ('foveabox', 'positives'),
                                       ('tood', 'positives'), ('rtmdet', 'positives'),
                                       ('yolox', 'positives'), ('rtmdet-ins', 'positives'),
                                       ('reppoints', 'positives'),
                                       ('centernet', 'positives'), ('paa', 'paa_reassign'),
                                       ('condinst', 'box and mask branches')])
def test_heads_whose_positives_are_not_known_are_refused_when_built(name, why):
    from odamtrain.models import install_odam
    model = build_zoo_detector(name)
    model.train_cfg = dict(odam_loss={})
    with pytest.raises(ValueError, match=f'odam_loss: .*{type(model.bbox_head).__name__}.*{why}'):
        install_odam(model)


@pytest.mark.parametrize('detector', ['fcos', 'rcnn'])
def test_switch_hook_turns_odam_train_on_at_begin_epoch(detector):
    """odam_loss.begin_epoch (OdamTrainSwitchHook): before it the losses are the detector's
    own (the same values), from it on they gain L_con / L_sep."""
    options = {'model.train_cfg.odam_loss.begin_epoch': 2}
    model = (build_detector('configs/fcos_odam_tiny_fpn_synthetic.py', cfg_options=options)
             if detector == 'fcos' else build_detector(
                 'configs/faster-rcnn_odam_tiny_fpn_synthetic.py', cfg_options=options)).train()
    inputs, samples = train_batch(model, seeds=(0, 1))
    hook, seen = OdamTrainSwitchHook(), {}
    for epoch in (0, 1, 2, 3):
        hook.before_train_epoch(SimpleNamespace(model=model, epoch=epoch))
        torch.manual_seed(0)
        seen[epoch] = model.loss(inputs, samples)
    for epoch in (0, 1):
        assert not any('odam' in k for k in seen[epoch])
    for epoch in (2, 3):
        assert {'loss_odam_con', 'loss_odam_sep'} <= set(seen[epoch])
    for key in seen[0]:  # the detector's own losses do not change with the switch
        torch.testing.assert_close(seen[0][key], seen[2][key])
