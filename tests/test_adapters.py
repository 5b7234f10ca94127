"""The detector adapters against mmdet's own code, for every covered family of the zoo.

The oracle: mmdet's own post-processing (``_predict_by_feat_single`` / YOLOX's
``predict_by_feat`` / the RoI head's ``predict_bbox``) run on head outputs computed from leaf
features, so that mmdet's final scores and boxes carry the graph; then one backward per
detection. The adapters never see it.
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from mmdet.models.dense_heads import (
    CenterNetHead,
    CondInstBboxHead,
    RTMDetInsHead,
    SABLRetinaHead,
    TOODHead,
    YOLOV3Head,
    YOLOXHead,
)
from mmdet.models.roi_heads import CascadeRoIHead

from odamtrain.apis import explain_batch
from odamtrain.explain import UnsupportedDetectorError, build_adapter
from odamtrain.explain.conv_towers import paste_windows
from odamtrain.explain.dense_gradients import dense_forward, exact_grads, window_grads
from odamtrain.explain.detr_gradients import detr_grads
from odamtrain.explain.heatmap import odam_heatmap, paste_roi_maps, resize_maps
from odamtrain.explain.protocol import scales
from odamtrain.explain.roi_gradients import roi_grads
from odamtrain.inference import image_window

from .helpers.oracles import frozen_norm_stats
from .zoo import (
    DENSE,
    DETR_ZOO,
    GROUNDING_ZOO,
    QUERY_RCNN,
    ROI_READS,
    TWO_STAGE,
    build_zoo_detector,
    zoo_batch,
)

SIDES = ('x1', 'y1', 'x2', 'y2')
PAA = ('paa', 'paa-novote', 'lad')  # (LAD's student is a PAA head)
FAST = ['retinanet', 'sabl-retinanet', 'atss', 'gfl', 'paa-novote', 'fcos', 'condinst',
        'autoassign', 'foveabox',
        'rtmdet', 'rtmdet-ins', 'yolox', 'yolov3', 'centernet']


@pytest.fixture(scope='module', params=DENSE)
def dense(request):
    model = build_zoo_detector(request.param)
    inputs, samples = zoo_batch(model)
    return request.param, model, inputs, samples


def mmdet_dense_graph(model, inputs, samples, frozen=False):
    """(leaf FPN levels, head outputs, mmdet's detections with the graph)."""
    head = model.bbox_head
    with torch.no_grad():
        feats = model.extract_feat(inputs)
    leaves = [f.detach().requires_grad_(True) for f in feats]
    metas = [s.metainfo for s in samples]
    with torch.enable_grad(), frozen_norm_stats() if frozen else contextlib.nullcontext():
        outs = head(leaves)
        if isinstance(head, (YOLOXHead, YOLOV3Head)):  # their predict_by_feat keeps the graph
            return leaves, outs, head.predict_by_feat(*outs, batch_img_metas=metas,
                                                      rescale=True)
        if isinstance(head, CenterNetHead):  # its own selection, one image at a time
            return leaves, outs, [head._predict_by_feat_single(
                *(o[0][i:i + 1] for o in outs), meta, rescale=True)
                for i, meta in enumerate(metas)]
        sizes = [c.shape[-2:] for c in outs[0]]
        if isinstance(head, SABLRetinaHead):  # square anchors, (bucket scores, offsets)
            squares = head.square_anchor_generator.grid_priors(sizes, device=leaves[0].device)
            return leaves, outs, [head._predict_by_feat_single(
                [c[i] for c in outs[0]], [b[0][i] for b in outs[1]],
                [b[1][i] for b in outs[1]], squares, meta, head.test_cfg, rescale=True)
                for i, meta in enumerate(metas)]
        instances = isinstance(head, (RTMDetInsHead, CondInstBboxHead))  # with strides
        priors = head.prior_generator.grid_priors(sizes, dtype=leaves[0].dtype,
                                                  device=leaves[0].device,
                                                  **(dict(with_stride=True) if instances
                                                     else {}))
        if isinstance(head, RTMDetInsHead):  # kernels and masks too
            return leaves, outs, [head._predict_by_feat_single(
                [c[i] for c in outs[0]], [r[i] for r in outs[1]], [k[i] for k in outs[2]],
                outs[3][i], [None] * len(sizes), priors, meta, head.test_cfg, rescale=True)
                for i, meta in enumerate(metas)]
        if isinstance(head, CondInstBboxHead):  # boxes at the input's scale: the mask
            results = []                         # head rescales them
            for i, meta in enumerate(metas):
                lists = [[o[i] for o in level] for level in outs]
                res = head._predict_by_feat_single(
                    *lists, [p[:, :2] for p in priors], [p[:, 2] for p in priors], meta,
                    head.test_cfg, rescale=False)
                res.bboxes = res.bboxes / res.bboxes.new_tensor(meta['scale_factor']).repeat(2)
                results.append(res)
            return leaves, outs, results
        results = []
        for i, meta in enumerate(metas):
            lists = [[o[i] for o in level] for level in outs]
            factors = lists[2] if len(outs) > 2 else [None] * len(sizes)
            results.append(head._predict_by_feat_single(lists[0], lists[1], factors, priors,
                                                        meta, head.test_cfg, rescale=True))
    return leaves, outs, results


def oracle_value(name, outs, res, p, target):
    """Y of detection p from mmdet's own graph (the logit: the class output its score
    reads, found by its gradient)."""
    if target == 'score' and name not in PAA:
        return res.scores[p]
    if target in SIDES:
        return res.bboxes[p, SIDES.index(target)]
    if name in ('tood', 'centernet'):  # no logit out: inverse sigmoid of its probability
        s = res.scores[p].clamp(1e-6, 1 - 1e-6)
        return torch.log(s / (1 - s))
    level, index = class_output(name, outs, res, p)
    if target == 'logit':
        return outs[0][level].flatten()[index]
    # PAA: mmdet's graph of the score is NaN (its NMS scores take sqrt(0 x IoU) of a zero
    # background column): sqrt(sigmoid(class) x sigmoid(IoU)) where mmdet's score reads
    b, c, y, x = torch.unravel_index(torch.tensor(index), outs[0][level].shape)
    iou = outs[2][level][b, c // (outs[0][level].shape[1] // outs[2][level].shape[1]), y, x]
    return (outs[0][level].flatten()[index].sigmoid() * iou.sigmoid()).sqrt()


def oracle_grads(name, y, outs, leaves) -> tuple:
    """dY/d(each leaf level) through mmdet's graph. PAA: through the box (and class)
    outputs only (mmdet's graph of its IoU output is NaN: the sqrt of its zero background
    column; a box reads no IoU output, a score is recomputed by :func:`oracle_value`)."""
    if name not in PAA or not y.grad_fn or y.grad_fn.name() == 'SqrtBackward0':
        return torch.autograd.grad(y, leaves, retain_graph=True, allow_unused=True)
    reads = list(outs[0]) + list(outs[1])
    cotangents = torch.autograd.grad(y, reads, retain_graph=True, allow_unused=True)
    pairs = [(o, g) for o, g in zip(reads, cotangents) if g is not None]
    return torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs],
                               retain_graph=True, allow_unused=True)


def class_output(name, outs, res, p) -> tuple:
    """(level, flat index) of the class output detection p's score reads, found by the
    gradient of mmdet's score."""
    grads = torch.autograd.grad(res.scores[p], list(outs[0]), retain_graph=True,
                                allow_unused=True)
    for level, (cls, g) in enumerate(zip(outs[0], grads)):
        if g is not None and g.abs().sum() > 0:
            if name == 'yolov3':  # one map: the score reads the objectness and a class
                attrib = cls.shape[1] // 3  # 3 anchors x (4 box, 1 objectness, K classes)
                channel = torch.arange(cls.shape[1], device=g.device)[None, :, None, None]
                g = g * (channel % attrib >= 5)
            return level, int(g.abs().flatten().argmax())
    raise AssertionError('the score reads no class output')


def unclipped(res, p, target, meta, model=None):
    """mmdet clips boxes to the image (but YOLOX, YOLOv3, CenterNet); the adapters do not
    (border boxes keep their gradient): compare box sides only where mmdet did not clip."""
    if target not in SIDES or isinstance(getattr(model, 'bbox_head', None),
                                         (YOLOXHead, YOLOV3Head, CenterNetHead)):
        return True
    i = SIDES.index(target)
    limit = meta['img_shape'][1 - i % 2]  # mmdet clips in input pixels (FoveaBox to - 1)
    v = float(res.bboxes[p, i]) * meta['scale_factor'][i % 2]
    return 1.5 < v < limit - 1.5


def pick(dets, k=2):
    """Up to k detections per level, including the level's extreme locations (borders)."""
    idx = []
    for level in dets.level.unique().tolist():
        on = (dets.level == level).nonzero()[:, 0]
        order = torch.argsort(dets.prior[on])
        idx += on[order[[0, -1]]].unique().tolist()[:k]
    return torch.tensor(sorted(set(idx)), device=dets.level.device)


def test_dense_detections_are_mmdets(dense):
    name, model, inputs, samples = dense
    ref = model.predict(inputs, samples)[0].pred_instances
    adapter = build_adapter(model)
    with torch.no_grad():
        fwd = adapter.forward(inputs, samples)
    det, = adapter.predictions(fwd)
    assert len(ref) > 1
    assert torch.equal(det.bboxes, ref.bboxes) and torch.equal(det.labels, ref.labels)
    torch.testing.assert_close(det.scores, ref.scores)
    # provenance: the class output at (level, prior, label) scores as mmdet does
    rows = adapter.rows(fwd.outputs, det)
    torch.testing.assert_close(adapter.score(rows, det.labels), det.scores)


@pytest.mark.parametrize('target', ['score', 'logit', 'x1', 'y1', 'x2', 'y2'])
@pytest.mark.parametrize('explicit', [True, False], ids=['towers', 'autograd'])
def test_dense_exact_gradients_equal_mmdets_graph(dense, target, explicit):
    """Batched exact dY/dA == one backward per detection through mmdet's own code, for
    detections at every level and at the borders; other levels get no gradient. Both
    exact paths: the explicit tower backward (heads with conv towers) and vectorised
    autograd (any head)."""
    name, model, inputs, samples = dense
    adapter = build_adapter(model)
    if adapter.target_support(target) is not None:  # PAA's score-voted boxes
        with pytest.raises(UnsupportedDetectorError, match="target 'x1'|target 'y1'|"
                                                           "target 'x2'|target 'y2'"):
            explain_batch(model, inputs, samples, target=target)
        return
    if explicit and adapter.fast_support() is not None:
        pytest.skip('no conv towers')
    meta = samples[0].metainfo
    with torch.no_grad():
        fwd = dense_forward(adapter, model.extract_feat(inputs), [meta], record=explicit)
    det, = adapter.predictions(fwd)
    leaves, outs, (res,) = mmdet_dense_graph(model, inputs, samples)
    assert torch.equal(res.bboxes, det.bboxes)
    chosen = pick(det)
    scale = scales([meta], inputs)
    checked = 0
    for level in det.level[chosen].unique().tolist():
        preds = det[chosen[det.level[chosen] == level]]
        got = dict(exact_grads(adapter, fwd, level, preds, target, scale, chunk=2))
        got = torch.cat([got[k] for k in sorted(got, key=lambda t: int(t[0]))])
        for j, p in enumerate(chosen[det.level[chosen] == level].tolist()):
            if not unclipped(res, p, target, meta, model):
                continue
            with torch.enable_grad():
                y = oracle_value(name, outs, res, p, target)
            grads = oracle_grads(name, y, outs, leaves)
            for lv, g in enumerate(grads):
                if lv != level:
                    assert g is None or g.abs().max() == 0
            ref = grads[level][0]
            torch.testing.assert_close(got[j], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
            checked += 1
    assert checked > 0


@pytest.mark.parametrize('name', FAST)
@pytest.mark.parametrize('target', ['score', 'x2'])
def test_dense_window_gradients_equal_frozen_statistics_autograd(name, target):
    """'fast' windows == autograd with the normalisation statistics held constant, the
    windows pasted back onto the level (zero elsewhere)."""
    model = build_zoo_detector(name)
    inputs, samples = zoo_batch(model)
    adapter = build_adapter(model)
    assert adapter.fast_support() is None
    meta = samples[0].metainfo
    with torch.no_grad():
        fwd = dense_forward(adapter, model.extract_feat(inputs), [meta])
    det, = adapter.predictions(fwd)
    leaves, outs, (res,) = mmdet_dense_graph(model, inputs, samples, frozen=True)
    chosen = pick(det)
    scale = scales([meta], inputs)
    for level in det.level[chosen].unique().tolist():
        sel = chosen[det.level[chosen] == level]
        grads, _ = window_grads(adapter, fwd, level, det[sel], target, scale)
        h, w = leaves[level].shape[-2:]
        ys, xs, _ = adapter.location(level, det.prior[sel], (h, w))
        full = paste_windows(grads, ys, xs, (h, w))
        for j, p in enumerate(sel.tolist()):
            if not unclipped(res, p, target, meta, model):
                continue
            with torch.enable_grad():
                y = oracle_value(name, outs, res, p, target)
            ref = oracle_grads(name, y, outs, leaves)[level]
            torch.testing.assert_close(full[j], ref[0], rtol=1e-4, atol=1e-6)


def test_dense_maps_equal_the_oracle_maps(dense):
    """explain_batch's maps (exact, Phi off) == ReLU(sum_k dY/dA_k * A_k) of the oracle
    gradients, resized to the image: the whole pipeline, not only the gradients."""
    name, model, inputs, samples = dense
    det, = explain_batch(model, inputs, samples, mode='exact', smooth=None, normalize=None)
    leaves, outs, (res,) = mmdet_dense_graph(model, inputs, samples)
    meta = samples[0].metainfo
    for p in pick(det).tolist():
        with torch.enable_grad():
            y = oracle_value(name, outs, res, p, 'score')
        grads = oracle_grads(name, y, outs, leaves)
        level = next(i for i, g in enumerate(grads) if g is not None and g.abs().sum() > 0)
        ref = odam_heatmap(grads[level], leaves[level].detach())
        origin, image_hw = image_window(meta)
        stride = inputs.shape[-2] / leaves[level].shape[-2]
        ref = resize_maps(ref, stride, image_hw, meta['ori_shape'][:2], origin)
        torch.testing.assert_close(det.heatmaps[p], ref[0], rtol=1e-4, atol=1e-6)


def cam_oracle(method: str, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """(h, w) map of a CAM method from one detection's gradient g and A (C, h, w) on the
    whole level, as the papers write them: Grad-CAM's mean gradient; Grad-CAM++'s alpha =
    g^2 / (2 g^2 + sum_ab A_ab g^3) times ReLU(g); SSGrad-CAM++ also times |g| / max |g|."""
    if method == 'gradcam':
        w = g.mean((1, 2))
    else:
        total = a.sum((1, 2))[:, None, None]
        denom = 2 * g ** 2 + total * g ** 3
        alpha = torch.where(denom != 0, g ** 2 / denom, torch.zeros_like(g))
        positive = g.clamp(min=0)
        if method == 'ssgradcampp':
            positive = positive * g.abs() / g.abs().max()
        w = (alpha * positive).sum((1, 2))
    return F.relu((w[:, None, None] * a).sum(0))


@pytest.mark.parametrize('name,mode', [('retinanet', 'windows'), ('fcos', 'exact'),
                                       ('faster-rcnn', 'exact')])
@pytest.mark.parametrize('method', ['gradcam', 'gradcampp', 'ssgradcampp'])
def test_cam_maps_equal_the_papers_formulas_on_oracle_gradients(name, mode, method):
    """Instance Grad-CAM, Grad-CAM++ and SSGrad-CAM++ maps == their formulas applied to one
    backward per detection through mmdet's graph on the whole level (RetinaNet: windowed
    gradients, exact without normalisation; the sums over the map still span the whole
    level); Faster R-CNN: on its RoI features."""
    model = build_zoo_detector(name)
    inputs, samples = zoo_batch(model)
    det, = explain_batch(model, inputs, samples, method=method, mode=mode, normalize=None)
    meta = samples[0].metainfo
    if name == 'faster-rcnn':
        with torch.no_grad():
            feats = model.extract_feat(inputs)
            proposals = model.rpn_head.predict(feats, samples, rescale=False)
        adapter = build_adapter(model)
        fwd = adapter.forward_rois(feats, proposals, [meta])
        preds, = adapter.predictions(fwd)
        leaves, (res,) = mmdet_roi_graph(model, inputs, samples)
        for p in range(4):
            (roi_feats,) = leaves
            g, = torch.autograd.grad(res.scores[p], roi_feats, retain_graph=True)
            want = cam_oracle(method, g[preds.roi[p]], roi_feats[preds.roi[p]].detach())
            roi = fwd.rois[0][preds.roi[p], 1:]  # input pixels -> original pixels
            box = roi / roi.new_tensor(meta['scale_factor']).repeat(2)
            want = paste_roi_maps(want[None], box[None], meta['ori_shape'][:2])
            torch.testing.assert_close(det.heatmaps[p:p + 1], want, rtol=1e-4, atol=1e-6)
        return
    leaves, outs, (res,) = mmdet_dense_graph(model, inputs, samples)
    checked = 0
    for p in pick(det).tolist():
        with torch.enable_grad():
            y = oracle_value(name, outs, res, p, 'score')
        grads = oracle_grads(name, y, outs, leaves)
        level = next(i for i, g in enumerate(grads) if g is not None and g.abs().sum() > 0)
        want = cam_oracle(method, grads[level][0], leaves[level][0].detach())
        origin, image_hw = image_window(meta)
        stride = inputs.shape[-2] / leaves[level].shape[-2]
        want = resize_maps(want[None], stride, image_hw, meta['ori_shape'][:2], origin)[0]
        # (alpha's denominator 2 g^2 + S g^3 can nearly cancel: it magnifies the float
        # difference between the windowed backward and autograd)
        torch.testing.assert_close(det.heatmaps[p], want, rtol=1e-4,
                                   atol=1e-4 * float(want.amax()) + 1e-6)
        checked += bool(want.amax() > 0)
    assert checked > 0


def test_tood_box_side_maps_take_the_per_detection_fallback(monkeypatch):
    """TOOD's box sides pass its deformable sampling (mmcv's DCN, no batching rule): the
    vectorised backward falls back to one backward per detection, inside explain_batch's
    no_grad, and the maps still equal the oracle's."""
    import odamtrain.explain.batched_autograd as batched
    logged = []
    monkeypatch.setattr(batched, 'print_log', lambda msg, **kw: logged.append(msg))
    model = build_zoo_detector('tood')
    inputs, samples = zoo_batch(model)
    det, = explain_batch(model, inputs, samples, mode='exact', target='x1', smooth=None,
                         normalize=None)
    assert any('one backward per prediction' in m for m in logged)
    leaves, outs, (res,) = mmdet_dense_graph(model, inputs, samples)
    meta = samples[0].metainfo
    checked = 0
    for p in pick(det).tolist():
        if not unclipped(res, p, 'x1', meta, model):
            continue
        with torch.enable_grad():
            y = oracle_value('tood', outs, res, p, 'x1')
        grads = oracle_grads('tood', y, outs, leaves)
        level = int(det.level[p])
        ref = odam_heatmap(grads[level], leaves[level].detach())
        origin, image_hw = image_window(meta)
        stride = inputs.shape[-2] / leaves[level].shape[-2]
        ref = resize_maps(ref, stride, image_hw, meta['ori_shape'][:2], origin)
        torch.testing.assert_close(det.heatmaps[p], ref[0], rtol=1e-4,
                                   atol=1e-6 * max(1.0, float(ref.abs().max())))
        checked += 1
    assert checked > 0


# ------------------------------------------------------------------- two-stage
@pytest.fixture(scope='module', params=TWO_STAGE)
def two_stage(request):
    model = build_zoo_detector(request.param)
    inputs, samples = zoo_batch(model)
    return request.param, model, inputs, samples


@contextlib.contextmanager
def leaf_roi_features(roi_head):
    """Inside, each box head's input (the RoI features) is replaced by a leaf, recorded."""
    heads = roi_head.bbox_head if isinstance(roi_head, CascadeRoIHead) else [roi_head.bbox_head]
    leaves, handles = [], []

    def hook(module, args):  # (Double-Head: the class read and the box read)
        new = tuple(a.detach().requires_grad_(True) for a in args)
        leaves.extend(new)
        return new

    for h in heads:
        handles.append(h.register_forward_pre_hook(hook))
    try:
        yield leaves
    finally:
        for h in handles:
            h.remove()


def mmdet_roi_graph(model, inputs, samples):
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        proposals = model.rpn_head.predict(feats, samples, rescale=False)
        context = roi_head_context(model.roi_head, feats)
    with torch.enable_grad(), leaf_roi_features(model.roi_head) as leaves:
        res = model.roi_head.predict_bbox(feats, [s.metainfo for s in samples], proposals,
                                          model.roi_head.test_cfg, rescale=True, **context)
    return leaves, res


def roi_head_context(roi_head, feats) -> dict:
    """What HTC's / SCNet's ``predict`` passes its ``predict_bbox`` besides the RoIs."""
    context = {}
    if getattr(roi_head, 'with_semantic', False):
        context['semantic_feat'] = roi_head.semantic_head(feats)[1]
    if getattr(roi_head, 'with_glbctx', False):
        context['glbctx_feat'] = roi_head.glbctx_head(feats)[1]
    return context


def test_roi_detections_are_mmdets(two_stage):
    name, model, inputs, samples = two_stage
    ref = model.predict(inputs, samples)[0].pred_instances
    det, = explain_batch(model, inputs, samples, normalize=None)
    # (CrowdDet: mmdet's labels are float zeros, odamtrain's class indices)
    assert len(ref) > 1 and torch.equal(det.labels, ref.labels.to(det.labels))
    # Mask R-CNN rescales its boxes in two steps (float rounding)
    torch.testing.assert_close(det.bboxes, ref.bboxes.to(det.bboxes), rtol=0, atol=1e-4)
    torch.testing.assert_close(det.scores, ref.scores)


@pytest.mark.parametrize('target', ['score', 'logit', 'y1', 'x2'])
def test_roi_gradients_equal_mmdets_graph(two_stage, target):
    """Per stage, the batched dY/dA_roi == one backward per detection through mmdet's own
    predict_bbox (Cascade: every stage's RoI features)."""
    name, model, inputs, samples = two_stage
    if name == 'ms-rcnn' and target == 'score':
        pytest.skip('rescored after predict_bbox: test_reads_at_the_detections_equal_mmdets_graph')
    adapter = build_adapter(model)
    meta = samples[0].metainfo
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        proposals = model.rpn_head.predict(feats, samples, rescale=False)
    fwd = adapter.forward_rois(feats, proposals, [meta])
    det, = adapter.predictions(fwd)
    leaves, (res,) = mmdet_roi_graph(model, inputs, samples)
    assert len(leaves) == len(fwd.feats) == ROI_READS.get(name, 1)
    got = [read.grads for read in roi_grads(adapter, fwd, det, target)]
    for p in range(min(len(det), 6)):
        if not unclipped(res, p, target, meta, model):
            continue
        with torch.enable_grad():
            if target == 'logit':  # the class output the score reads
                column = det.labels[p]
                if 'instance' in det:  # CrowdDet: the instance's softmax column 1
                    column = det.instance[p] * (adapter.bbox_head.num_classes + 1) + 1
                y = fwd.cls_score[det.roi[p], column]
                refs = torch.autograd.grad(y, fwd.feats, retain_graph=True, allow_unused=True)
                refs = [torch.zeros_like(f[0]) if r is None else r[det.roi[p]]
                        for r, f in zip(refs, fwd.feats)]
            else:
                y = res.scores[p] if target == 'score' else res.bboxes[p, SIDES.index(target)]
                refs = [g[det.roi[p]] for g in torch.autograd.grad(y, leaves, retain_graph=True)]
        for stage, ref in enumerate(refs):
            torch.testing.assert_close(got[stage][p], ref, rtol=1e-4, atol=1e-6)


def test_cascade_maps_sum_the_stages(two_stage):
    """A map sums its RoI reads' maps, each pasted into the box it was read from (Cascade,
    HTC, SCNet: the stages, Double-Head: the class and the enlarged box reads)."""
    name, model, inputs, samples = two_stage
    if name not in ROI_READS:
        pytest.skip('one RoI read')
    meta = samples[0].metainfo
    det, = explain_batch(model, inputs, samples, smooth=None, normalize=None)
    adapter = build_adapter(model)
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        proposals = model.rpn_head.predict(feats, samples, rescale=False)
    fwd = adapter.forward_rois(feats, proposals, [meta])
    grads = [read.grads for read in roi_grads(adapter, fwd, det, 'score')]
    scale = inputs.new_tensor(meta['scale_factor'][:2]).repeat(2)
    ref = sum(paste_roi_maps(odam_heatmap(g, f.detach()[det.roi]), rois[det.roi, 1:] / scale,
                             meta['ori_shape'][:2])
              for g, f, rois in zip(grads, fwd.feats, fwd.rois))
    torch.testing.assert_close(det.heatmaps, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name, target', [('ms-rcnn', 'score'), ('grid-rcnn', 'x1'),
                                          ('grid-rcnn', 'y2')])
def test_reads_at_the_detections_equal_mmdets_graph(name, target):
    """What a branch reads at each detection's box after NMS: MS R-CNN's score (the box
    head's probability x the mask IoU) and Grid R-CNN's box sides (the grid head's points).
    The batched dY/dA of the box head's RoI read and of the branch's read == one backward
    per detection through mmdet's own predict_bbox (and predict_mask), both reads leaves;
    the branch reads at mmdet's box."""
    model = build_zoo_detector(name)
    inputs, samples = zoo_batch(model)
    adapter, head, meta = build_adapter(model), model.roi_head, samples[0].metainfo
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        proposals = model.rpn_head.predict(feats, samples, rescale=False)
    fwd = adapter.forward_rois(feats, proposals, [meta])
    det, = adapter.predictions(fwd)
    reads = roi_grads(adapter, fwd, det, target)
    extractor = head.mask_roi_extractor if name == 'ms-rcnn' else head.grid_roi_extractor
    branch_leaves, branch_rois = [], []

    def leaf_output(module, args, out):
        branch_rois.append(args[1])
        branch_leaves.append(out.detach().requires_grad_(True))
        return branch_leaves[-1]

    handle = extractor.register_forward_hook(leaf_output)
    try:
        with torch.enable_grad(), leaf_roi_features(head) as leaves:
            if name == 'ms-rcnn':
                res, = head.predict_bbox(feats, [meta], proposals, head.test_cfg, rescale=False)
                res, = head.predict_mask(feats, [meta], [res], rescale=True)
            else:
                res, = head.predict_bbox(feats, [meta], proposals, head.test_cfg, rescale=True)
    finally:
        handle.remove()
    assert len(reads) == 2 and len(branch_leaves) == 1 and len(det) > 1
    assert torch.equal(res.labels, det.labels)
    torch.testing.assert_close(res.scores, det.scores)
    torch.testing.assert_close(res.bboxes, det.bboxes)
    torch.testing.assert_close(reads[1].rois, branch_rois[0])
    checked = 0
    for p in range(min(len(det), 6)):
        if not unclipped(res, p, target, meta, model):
            continue
        y = res.scores[p] if target == 'score' else res.bboxes[p, SIDES.index(target)]
        box_ref, branch_ref = torch.autograd.grad(y, [leaves[0], branch_leaves[0]],
                                                  retain_graph=True, allow_unused=True)
        box_ref = torch.zeros_like(leaves[0]) if box_ref is None else box_ref
        assert branch_ref[p].abs().sum() > 0
        torch.testing.assert_close(reads[0].grads[p], box_ref[det.roi[p]], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(reads[1].grads[p], branch_ref[p], rtol=1e-4, atol=1e-6)
        checked += 1
    assert checked > 0


@pytest.mark.parametrize('target', ['score', 'logit', 'x1', 'y2'])
def test_sparse_rcnn_gradients_equal_mmdets_graph(target, monkeypatch):
    """Sparse R-CNN (queries that attend to each other over six stages): the vectorised
    dY/dA_level == one backward per detection through mmdet's own ``predict_bbox`` on leaf
    FPN levels (box sides: its last stage's refined proposals, which mmdet detaches before
    returning them)."""
    model = build_zoo_detector('sparse-rcnn')
    inputs, samples = zoo_batch(model)
    adapter, head, meta = build_adapter(model), model.roi_head, samples[0].metainfo
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        proposals = model.rpn_head.predict(feats, samples)
    fwd = adapter.forward_proposals(feats, proposals, [meta])
    det, = adapter.predictions(fwd)
    got = [None] * len(det)
    for idx, level_grads in detr_grads(adapter, fwd, det, target):
        for j, p in enumerate(idx.tolist()):
            got[p] = [g[j] for g in level_grads]
    stages = []
    original = head._bbox_forward
    monkeypatch.setattr(head, '_bbox_forward',
                        lambda *a, **k: stages.append(original(*a, **k)) or stages[-1])
    with torch.enable_grad():
        levels = [f.detach().requires_grad_(True) for f in feats[:len(fwd.feats)]]
        res, = head.predict_bbox(levels, [meta], [p.clone() for p in proposals],
                                 head.test_cfg, rescale=True)
    assert len(stages) == head.num_stages and len(det) > 1
    assert torch.equal(res.labels, det.labels)
    torch.testing.assert_close(res.scores, det.scores)
    torch.testing.assert_close(res.bboxes, det.bboxes)
    last = stages[-1]
    scale = inputs.new_tensor(meta['scale_factor'][:2]).repeat(2)
    for p in range(min(len(det), 6)):
        query, label = int(det.query[p]), int(det.labels[p])
        with torch.enable_grad():
            if target == 'score':
                y = res.scores[p]
            elif target == 'logit':
                y = last['cls_score'][0, query, label]
            else:
                i = SIDES.index(target)
                y = last['decoded_bboxes'][query, i] / scale[i]
            refs = torch.autograd.grad(y, levels, retain_graph=True, allow_unused=True)
        assert any(r is not None and r.abs().sum() > 0 for r in refs)
        for g, ref in zip(got[p], refs):
            torch.testing.assert_close(g, torch.zeros_like(g) if ref is None else ref[0],
                                       rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize('config, head', [
    ('guided_anchoring/ga-retinanet_r50-caffe_fpn_1x_coco.py', 'GARetinaHead')])
def test_unsupported_head_is_one_clear_error_before_any_work(config, head):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.hub import get_config
    register_all_modules()
    cfg = get_config(f'mmdet::{config}')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    with pytest.raises(UnsupportedDetectorError) as e:
        explain_batch(model, torch.zeros(1, 3, 64, 64), [])
    assert head in str(e.value)
    assert all(name in str(e.value) for name in ('FCOSHead', 'CascadeRoIHead', 'DETRHead'))


def test_subclass_with_another_post_processing_is_refused():
    model = build_zoo_detector('atss')

    class MyHead(type(model.bbox_head)):
        def _bbox_post_process(self, *args, **kwargs):
            return super()._bbox_post_process(*args, **kwargs)

    model.bbox_head.__class__ = MyHead
    with pytest.raises(UnsupportedDetectorError, match='MyHead._bbox_post_process'):
        build_adapter(model)


def test_tood_explains_exactly_with_a_log_line(monkeypatch):
    import odamtrain.explain.protocol as protocol
    model = build_zoo_detector('tood')
    assert isinstance(model.bbox_head, TOODHead)
    logged = []
    monkeypatch.setattr(protocol, 'print_log', lambda msg, **kw: logged.append(msg))
    inputs, samples = zoo_batch(model)
    fast, = explain_batch(model, inputs, samples, mode='fast', normalize=None)
    exact, = explain_batch(model, inputs, samples, mode='exact', normalize=None)
    assert any('fast mode does not apply' in m for m in logged)
    torch.testing.assert_close(fast.heatmaps, exact.heatmaps)


def test_image_window_is_where_centernets_pipeline_put_the_image():
    """CenterNet's test pipeline pastes the image, not resized, into a larger canvas: the
    input at image_window is the image (a grey one: channel order aside), and the
    explained boxes are mmdet's (the border subtracted)."""
    import numpy as np

    from odamtrain.inference import pixel_to_input, prepare_batch
    model = build_zoo_detector('centernet')
    grey = np.random.default_rng(0).integers(0, 255, (150, 190), dtype=np.uint8)
    inputs, samples = prepare_batch(model, np.repeat(grey[..., None], 3, 2))
    (top, left), (h, w) = image_window(samples[0].metainfo)
    assert (h, w) == (150, 190) and (top, left) != (0, 0)
    want = pixel_to_input(model, torch.from_numpy(grey).float().expand(3, -1, -1))
    torch.testing.assert_close(inputs[0, :, top:top + h, left:left + w], want)
    det, = explain_batch(model, inputs, samples, verify=True)
    assert len(det) and det.heatmaps.shape[1:] == (150, 190)


# ------------------------------------------------------------------- black box
@pytest.mark.parametrize('name', DENSE + TWO_STAGE + QUERY_RCNN + list(DETR_ZOO)
                         + list(GROUNDING_ZOO))
def test_drise_dhsic_and_vps_take_every_family_as_a_black_box(name):
    """D-RISE's map of a detection == its definition computed here from mmdet's own
    predictions of the masked images (sum_i w_i M_i / sum_i M_i, w_i = max IoU x score of
    the detection's class; masks over the image, the input's padding left alone); D-HSIC's
    == the cells' HSIC of the same evidence on its designs' masked images; VPS runs its
    forward budget. No adapter is involved."""
    from mmdet.structures.bbox import bbox_overlaps

    from odamtrain.explain.dhsic import hsic_designs, hsic_scores
    from odamtrain.explain.drise import drise_grids, drise_masks
    from odamtrain.inference import pixel_to_input
    model = build_zoo_detector(name)
    inputs, samples = zoo_batch(model)
    target = model.predict(inputs, samples)[0].pred_instances[:1]
    meta = samples[0].metainfo
    # (the random YOLOv3's scores tie to ~1e-7, the size of the difference between a batched
    # and a single forward: its top-k then differs; one masked image per forward)
    kw = dict(num_masks=6, grid=4, keep_prob=0.5, batch_size=1 if name == 'yolov3' else 3,
              seed=0, estimator='coverage')
    det, = explain_batch(model, inputs, samples, method='drise', normalize=None,
                         targets=[target], drise=kw)
    (top, left), (h, w) = image_window(meta)  # (CenterNet pastes the image at an offset)
    window = (Ellipsis, slice(top, top + h), slice(left, left + w))
    cells, shifts = drise_grids(6, 4, 0.5, (h, w), torch.Generator().manual_seed(0))
    masks = drise_masks(cells, shifts, (h, w)).to(inputs)
    black = pixel_to_input(model, inputs.new_zeros(3))[:, None, None]
    weighted = inputs.new_zeros(h, w)
    for m in masks:
        masked = inputs.clone()
        masked[window] = inputs[window] * m + black * (1 - m)
        with torch.no_grad():
            out = model.predict(masked, samples)[0].pred_instances
        same = out.labels == target.labels[0]
        sim = bbox_overlaps(target.bboxes, out.bboxes)[0] * out.scores * same
        weighted += (float(sim.max()) if len(sim) else 0.0) * m
    coverage = masks.sum(0)
    want = torch.where(coverage > 0, weighted / coverage.clamp(min=1e-12), 0.)
    want = resize_maps(want[None], 1, (h, w), meta['ori_shape'][:2])[0]
    torch.testing.assert_close(det.heatmaps[0], want, rtol=1e-4, atol=1e-6)
    # D-HSIC: the cells' HSIC of mmdet's own evidence on the masked images
    hsic, = explain_batch(model, inputs, samples, method='dhsic', normalize=None,
                          targets=[target], dhsic=dict(num_designs=6, grid=2, batch_size=
                                                       1 if name == 'yolov3' else 3))
    designs = hsic_designs(6, 2, 0).to(inputs)
    evidence = []
    for d in designs:
        m = F.interpolate(d[None, None], size=(h, w), mode='nearest')[0, 0]
        masked = inputs.clone()
        masked[window] = inputs[window] * m + black * (1 - m)
        with torch.no_grad():
            out = model.predict(masked, samples)[0].pred_instances
        sim = bbox_overlaps(target.bboxes, out.bboxes)[0] * out.scores * (
            out.labels == target.labels[0])
        evidence.append(float(sim.max()) if len(sim) else 0.0)
    cells = hsic_scores(designs.flatten(1).cpu(), torch.tensor(evidence)[:, None])
    want = F.interpolate(cells.reshape(1, 1, 2, 2).to(inputs), size=(h, w), mode='bicubic',
                         align_corners=False)[0].clamp(min=0)
    want = resize_maps(want, 1, (h, w), meta['ori_shape'][:2])[0]
    torch.testing.assert_close(hsic.heatmaps[0], want, rtol=1e-4, atol=1e-6)
    vps, = explain_batch(model, inputs, samples, method='vps', normalize=None,
                         targets=[target], vps=dict(regions=4, max_steps=1))
    assert vps.heatmaps.shape == (1, *meta['ori_shape'][:2]) and vps.heatmaps.min() >= 0
