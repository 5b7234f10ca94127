"""ODAM for Grounding DINO (a tiny random model with a tiny local BERT: nothing downloads)
against one backward per detection through mmdet's own ``predict`` (prompt, BERT, fusion,
decoder, post-processing), with A swapped in by a forward hook the adapter never sees."""
import contextlib

import cv2
import numpy as np
import pytest
import torch
from mmdet.apis import inference_detector

from odamtrain.apis import explain_batch, explain_detector
from odamtrain.evaluation.explanation_audit import collect_explanation_scores
from odamtrain.explain import UnsupportedDetectorError, build_adapter
from odamtrain.explain.detr_gradients import detr_grads
from odamtrain.inference import prepare_batch

from .conftest import run_tool
from .test_detr import summed_level_maps
from .test_explanation_audit import add_detections_to_gt, check_detected_maps, loader
from .zoo import ZOO_PROMPT, build_zoo_detector, zoo_batch, zoo_config

SIDES = ('x1', 'y1', 'x2', 'y2')


@pytest.fixture(scope='module')
def gdino():
    model = build_zoo_detector('grounding-dino')
    inputs, samples = zoo_batch(model)
    return model, inputs, samples


@contextlib.contextmanager
def mmdet_leaves(model, features):
    """Inside, the output of the backbone or the neck is replaced by leaves (recorded), and
    the head's last-layer token logits are recorded, while mmdet's ``predict`` runs."""
    leaves, captured = [], {}

    def swap(module, args, out):
        leaves.extend(x.detach().requires_grad_(True) for x in out)
        return tuple(leaves)

    module = model.neck if features == 'neck' else model.backbone
    handle = module.register_forward_hook(swap)
    head = model.bbox_head
    original = type(head).predict_by_feat

    def capture(cls, *args, **kwargs):
        captured['cls'] = cls  # (layers, B, Q, T)
        return original(head, cls, *args, **kwargs)

    head.predict_by_feat = capture
    try:
        yield leaves, captured
    finally:
        handle.remove()
        del head.predict_by_feat


def oracle_values(model, inputs, samples, features):
    """(leaves, mmdet's detections with the graph, the token logits (layers, 1, Q, T))."""
    with torch.enable_grad(), mmdet_leaves(model, features) as (leaves, captured):
        res = model.predict(inputs, [s.clone() for s in samples])[0].pred_instances
    return leaves, res, captured['cls']


def oracle_value(res, cls, p, target):
    if target == 'score':
        return res.scores[p]
    if target in SIDES:
        return res.bboxes[p, SIDES.index(target)]
    # 'logit': the mean of the token logits whose sigmoids mmdet's score averages
    g, = torch.autograd.grad(res.scores[p], cls, retain_graph=True)
    read = g[-1, 0].abs() > 0
    assert read.any(-1).sum() == 1 and not g[:-1].any()  # one query of the last layer
    return cls[-1, 0][read].mean()


def test_detections_are_mmdets(gdino):
    model, inputs, samples = gdino
    with torch.no_grad():
        ref = model.predict(inputs, [s.clone() for s in samples])[0].pred_instances
    det, = explain_batch(model, inputs, samples, normalize=None)
    assert len(ref) == 12 and torch.equal(det.labels, ref.labels)
    assert len(set(ref.labels.tolist())) > 1 and det.label_names == ref.label_names
    torch.testing.assert_close(det.bboxes, ref.bboxes)
    torch.testing.assert_close(det.scores, ref.scores)
    assert det.heatmaps.shape == (12, *samples[0].ori_shape) and det.heatmaps.min() >= 0


@pytest.mark.parametrize('features,target', [('neck', t) for t in ('score', 'logit') + SIDES]
                         + [('backbone', 'score'), ('backbone', 'y2')])
def test_batched_gradients_equal_one_backward_per_detection(gdino, features, target):
    """The vectorised backward (chunks of 5) == one backward per detection through mmdet's
    own predict, on every level of A."""
    model, inputs, samples = gdino
    adapter = build_adapter(model)
    fwd = adapter.forward(inputs, [s.clone() for s in samples], features)
    det, = adapter.predictions(fwd)
    got = {}
    for idx, levels in detr_grads(adapter, fwd, det, target, chunk=5):
        for j, p in enumerate(idx.tolist()):
            got[p] = [g[j] for g in levels]
    assert sorted(got) == list(range(len(det)))
    leaves, res, cls = oracle_values(model, inputs, samples, features)
    assert len(leaves) == len(fwd.leaves) == (4 if features == 'neck' else 3)
    meta = samples[0].metainfo
    checked = nonzero = 0
    for p in range(0, len(det), 2):
        if target in SIDES:  # mmdet clips its boxes: compare where it did not
            v = float(res.bboxes[p, SIDES.index(target)])
            if not 1 < v < meta['ori_shape'][1 - SIDES.index(target) % 2] - 1:
                continue
        with torch.enable_grad():
            y = oracle_value(res, cls, p, target)
        refs = torch.autograd.grad(y, leaves, retain_graph=True, allow_unused=True)
        for g, ref in zip(got[p], refs):
            ref = torch.zeros_like(g) if ref is None else ref[0]
            torch.testing.assert_close(g, ref, rtol=1e-4,
                                       atol=1e-5 * float(ref.abs().max()) + 1e-12)
            nonzero += bool(ref.abs().max() > 0)
        checked += 1
    assert checked > 0 and nonzero > 0


def test_maps_sum_the_levels_of_a(gdino):
    """explain_batch's map (Phi off) == sum over A's levels of ReLU(sum_k g_k A_k), resized."""
    model, inputs, samples = gdino
    det, = explain_batch(model, inputs, samples, smooth=None, normalize=None, target='logit')
    levels, want = summed_level_maps(model, inputs, samples, 'logit')
    assert levels == 4 and want.amax() > 0
    torch.testing.assert_close(det.heatmaps, want)


def test_referring_expression_reads_the_best_token(gdino):
    """A prompt without entities (mmdet's tokens_positive=-1): one class, the score of the
    best token; gradients == mmdet's."""
    model, inputs, _ = gdino
    img = np.random.default_rng(0).integers(0, 255, (150, 190, 3), dtype=np.uint8)
    _, samples = prepare_batch(model, img)
    samples[0].set_metainfo(dict(text='the man on the left', tokens_positive=-1))
    adapter = build_adapter(model)
    fwd = adapter.forward(inputs, [s.clone() for s in samples])
    det, = adapter.predictions(fwd)
    assert fwd.positive_maps[0] is None and det.labels.eq(0).all()
    leaves, res, _ = oracle_values(model, inputs, samples, 'neck')
    torch.testing.assert_close(det.bboxes, res.bboxes.detach())
    (idx, levels), = detr_grads(adapter, fwd, det, 'score', chunk=12)
    assert idx.tolist() == list(range(12))
    for p in (0, 5):
        refs = torch.autograd.grad(res.scores[p], leaves, retain_graph=True)
        for g, ref in zip(levels, refs):
            torch.testing.assert_close(g[p], ref[0], rtol=1e-4,
                                       atol=1e-5 * float(ref.abs().max()))


def test_explain_detector_takes_the_prompt_as_mmdets_inference(gdino):
    """text='a . b' and a list of names give mmdet's inference_detector(text_prompt=...,
    custom_entities=True) detections, each with its map."""
    model, _, _ = gdino
    img = np.random.default_rng(1).integers(0, 255, (150, 190, 3), dtype=np.uint8)
    ref = inference_detector(model, img, text_prompt=ZOO_PROMPT,
                             custom_entities=True).pred_instances
    for text in (ZOO_PROMPT, ['person', 'bicycle', 'car']):
        det = explain_detector(model, img, text=text).pred_instances
        assert torch.equal(det.labels, ref.labels) and det.heatmaps.shape[0] == len(ref)
        torch.testing.assert_close(det.bboxes, ref.bboxes)
        torch.testing.assert_close(det.scores, ref.scores)
    with pytest.raises(ValueError, match="reads a text prompt.*text='person . bicycle'"):
        explain_detector(model, img)
    with pytest.raises(ValueError, match='reads a text prompt'):
        explain_detector(model, img, method='drise')


def test_what_is_not_reproduced_is_refused_by_name(gdino):
    model, inputs, samples = gdino
    adapter = build_adapter(model)
    with pytest.raises(ValueError, match="features must be one of.*'neck'"):
        adapter.forward(inputs, samples, 'memory')
    with pytest.raises(UnsupportedDetectorError, match='set predictions'):
        adapter.candidates(adapter.forward(inputs, samples))
    model.test_cfg['chunked_size'] = 40
    try:
        with pytest.raises(UnsupportedDetectorError, match='chunked_size'):
            build_adapter(model)
    finally:
        del model.test_cfg['chunked_size']


def test_the_audit_reads_each_images_prompt(gdino):
    """The audit on Grounding DINO with the prompt the test pipeline packs (the class names,
    as a dataset with return_classes=True gives them): the detected objects' scores are those
    of explain_batch's maps (ODAM, D-RISE), missed objects are explained too."""
    model = gdino[0]
    data = loader(model, [0, 1], text=('person', 'bicycle', 'car'))
    assert data[0]['data_samples'][0].text == ('person', 'bicycle', 'car')
    budgets = dict(drise=dict(num_masks=4, grid=4))
    settings = dict(methods=('odam', 'drise'), sets=('detected', 'missed'), score_thr=0.0,
                    iou_thr=0.5, deletion_steps=2, **budgets)
    add_detections_to_gt(model, data)
    raw = collect_explanation_scores(model, data, **settings)
    check_detected_maps(model, data, settings, raw, rtol=1e-4, **budgets)
    for method in settings['methods']:
        aucs = raw['sets']['detected'][method]['deletion_auc']
        assert len(aucs) >= 6 and all(0 <= v <= 1 for v in aucs)


def test_explain_tool_takes_the_prompt(gdino, tmp_path):
    """tools/explain.py --text on a config and a checkpoint of the tiny model: its .npz holds
    mmdet's inference_detector detections for that prompt, each with a map."""
    model = gdino[0]
    zoo_config('grounding-dino').dump(str(tmp_path / 'gdino.py'))  # (building edits a cfg)
    torch.save(dict(state_dict=model.state_dict(), meta={}), tmp_path / 'gdino.pth')
    img = np.random.default_rng(2).integers(0, 255, (150, 190, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'street.png'), img)
    proc = run_tool('tools/explain.py', str(tmp_path / 'gdino.py'), str(tmp_path / 'gdino.pth'),
                    str(tmp_path / 'street.png'), '--out-dir', str(tmp_path / 'out'),
                    '--text', 'bicycle . car', '--score-thr', '0', '--topk', '4')
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / 'out' / 'street_odam_score.npz')
    ref = inference_detector(model, cv2.imread(str(tmp_path / 'street.png')),
                             text_prompt='bicycle . car', custom_entities=True).pred_instances
    assert set(ref.labels[:4].tolist()) <= {0, 1}
    np.testing.assert_array_equal(got['labels'], ref.labels[:4].numpy())
    np.testing.assert_allclose(got['bboxes'], ref.bboxes[:4].numpy(), rtol=1e-5, atol=1e-4)
    assert got['heatmaps'].shape == (4, 150, 190) and got['heatmaps'].max() > 0


def test_model_is_restored_after_an_error(gdino, monkeypatch):
    """An error inside mmdet's predict leaves neither the swapped extract_feat nor the
    capture behind."""
    model, inputs, samples = gdino
    adapter = build_adapter(model)

    def boom(*args, **kwargs):
        raise RuntimeError('inside the decoder')

    monkeypatch.setattr(model, 'forward_decoder', boom)
    with pytest.raises(RuntimeError, match='inside the decoder'):
        adapter.forward(inputs, [s.clone() for s in samples])
    assert 'extract_feat' not in vars(model) and 'predict_by_feat' not in vars(model.bbox_head)
