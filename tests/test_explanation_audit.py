"""The audit's object sets and scores: the failure sets follow their definition, each
object's scores are those of its own map, and sharding the images (ranks) changes nothing."""
import math

import numpy as np
import pytest
import torch
from mmdet.structures.bbox import HorizontalBoxes
from mmengine.dataset import pseudo_collate
from mmengine.structures import InstanceData

from odamtrain.apis import explain_batch
from odamtrain.datasets import render_scene
from odamtrain.evaluation.explanation_audit import (
    AuditSettings,
    _maps_on_input,
    collect_explanation_scores,
    localisation_scores,
    merge_scores,
    summarize_scores,
)
from odamtrain.evaluation.functional import match_detections
from odamtrain.inference import image_window
from odamtrain.inference.batch import _source, _test_pipeline
from odamtrain.visualization import format_audit_table

from .odam_fixtures import build_detector

SETTINGS = dict(methods=('odam', 'drise'), sets=('detected', 'missed'), score_thr=0.3,
                deletion_steps=2, drise=dict(num_masks=4))


@pytest.fixture(scope='module')
def fcos():
    return build_detector('configs/fcos_tiny_fpn_synthetic.py')


def loader(model, seeds, text=None):
    """One collated batch per synthetic scene, with its GT (full boxes, class 0) and, for a
    grounding detector, the prompt ``text`` (as a dataset with return_classes=True)."""
    out = []
    for seed in seeds:
        img, gtboxes = render_scene(np.random.default_rng([seed, 9, 9]))
        src = _source(img, seed)
        if text is not None:
            src.update(text=text, custom_entities=True)
        src['instances'] = [dict(bbox=[x, y, x + w, y + h], bbox_label=0, ignore_flag=0)
                            for x, y, w, h in (g['fbox'] for g in gtboxes)]
        out.append(pseudo_collate([_test_pipeline(model, img, True)(src)]))
    return out


def test_untrained_detector_misses_everything_and_scores_are_the_maps(fcos):
    data = loader(fcos, [0])
    raw = collect_explanation_scores(fcos, data, **SETTINGS)
    batch = fcos.data_preprocessor(data[0], False)
    gt = batch['data_samples'][0].gt_instances
    # a random-init FCOS scores ~0.01: no detection reaches 0.3, every person is missed
    assert len(raw['sets']['missed']['odam']['odi']) == len(gt) > 3
    assert raw['sets']['detected']['odam']['odi'] == []
    # each missed object is scored on the map of its best prediction (explain_batch)
    maps = explain_batch(fcos, batch['inputs'], batch['data_samples'], method='odam',
                         normalize=None, targets=[InstanceData(bboxes=gt.bboxes,
                                                               labels=gt.labels)])[0].heatmaps
    want = localisation_scores(maps, gt.bboxes, torch.arange(len(gt)))
    for name, values in want.items():
        np.testing.assert_allclose(raw['sets']['missed']['odam'][name], values)
    for method in SETTINGS['methods']:
        out = raw['sets']['missed'][method]
        highest = [max(c) for c in out['curves']['insertion']]
        assert out['highest_score'] == highest
        assert out['success'] == [float(h >= 0.3) for h in highest]
    table = summarize_scores(raw)
    assert table['detected'] == {} or all(r['objects'] == 0 for r in table['detected'].values())
    assert table['missed']['odam']['objects'] == len(gt)
    assert 'missed:' in format_audit_table(table)


def test_shards_merge_to_the_whole(fcos):
    """What the hook does across ranks: every other image on each, then merge_scores."""
    data = loader(fcos, [0, 1])
    # some predictions pass, some do not; IoU evidence: deletion depends on the noise
    settings = dict(SETTINGS, score_thr=0.0101, evidence='iou')
    whole = collect_explanation_scores(fcos, data, **settings)
    parts = [collect_explanation_scores(fcos, data[i:i + 1], **settings) for i in (0, 1)]
    merged = merge_scores(parts)
    assert merged['images'] == whole['images'] == 2
    for name in whole['sets']:
        for method in whole['sets'][name]:
            for key, values in whole['sets'][name][method].items():
                got = merged['sets'][name][method][key]
                if key == 'curves':
                    assert got == values
                else:
                    np.testing.assert_allclose(got, values)
    a, b = summarize_scores(merged), summarize_scores(whole)
    for name in b:
        for method in b[name]:
            assert a[name][method] == pytest.approx(b[name][method], nan_ok=True)


def test_bad_settings_are_refused(fcos):
    with pytest.raises(ValueError, match='audit sets must be a non-empty list'):
        collect_explanation_scores(fcos, [], sets=('lost',))
    with pytest.raises(ValueError, match='audit extent must be one of'):
        collect_explanation_scores(fcos, [], extent='all')
    with pytest.raises(ValueError, match="unknown audit settings \\['iou_threshold'\\]"):
        collect_explanation_scores(fcos, [], iou_threshold=0.5)
    with pytest.raises(ValueError, match='vps: unknown settings'):
        AuditSettings(vps=dict(step=3))
    assert AuditSettings(vps=dict(window=2)).vps.box_slots == 3  # more than the window: all of it
    with pytest.raises(ValueError, match='vps.box_slots must be an integer >= 0'):
        AuditSettings(vps=dict(box_slots=-1))
    with pytest.raises(ValueError, match='audit score_thr must be a number in'):
        AuditSettings(score_thr=3)
    with pytest.raises(ValueError, match='audit extra_evidences must be distinct'):
        AuditSettings(extra_evidences=('class', 'class'))
    with pytest.raises(ValueError, match='audit extra_evidences must be distinct'):
        AuditSettings(extra_evidences=('score',))
    with pytest.raises(ValueError, match='audit deletion_baseline must be one of'):
        AuditSettings(deletion_baseline='grey')
    assert AuditSettings(extra_evidences='iou').extra_evidences == ('iou',)


def test_the_vps_papers_table_1_columns(fcos):
    """evidence='vps' with extra_evidences ('class', 'iou'): the extra AUCs are those of an
    audit with that evidence (the same maps, noise and objects), and the table names them;
    with deletion_baseline='black' deletion ends on the black image, as insertion starts."""
    data = loader(fcos, [0])
    base = dict(SETTINGS, score_thr=0.0101, methods=('odam',), extent='image')
    table1 = collect_explanation_scores(fcos, data, evidence='vps',
                                        extra_evidences=('class', 'iou'), **base)
    for e in ('class', 'iou'):
        alone = collect_explanation_scores(fcos, data, evidence=e, **base)
        for name, per_method in alone['sets'].items():
            got, want = table1['sets'][name]['odam'], per_method['odam']
            for auc in ('deletion_auc', 'insertion_auc'):
                np.testing.assert_allclose(got[f'{auc}_{e}'], want[auc])
    text = format_audit_table(summarize_scores(table1))
    assert 'deletion[class](-)' in text and 'insertion[iou](+)' in text
    black = collect_explanation_scores(fcos, data, evidence='vps', deletion_baseline='black',
                                       **base)
    for per_method in black['sets'].values():
        curves = per_method['odam']['curves']
        for deletion, insertion in zip(curves['deletion'], curves['insertion']):
            assert deletion[-1] == insertion[0]  # the whole image deleted = the black image


def test_the_hook_checks_its_settings_when_the_config_is_built():
    """A misspelt key or method fails when mmengine builds the hook (Runner set-up, before
    training), not when the audit runs after it."""
    from mmengine.registry import HOOKS

    import odamtrain.engine  # noqa: F401  (registers the hook)
    hook = HOOKS.build(dict(type='ExplanationAuditHook', methods=('odam', 'vps'),
                            vps=dict(regions=8), max_images=2))
    assert hook.settings.methods == ('odam', 'vps') and hook.settings.vps.regions == 8
    with pytest.raises(ValueError, match='audit methods must be'):
        HOOKS.build(dict(type='ExplanationAuditHook', methods=('odam', 'gradcam++')))
    with pytest.raises(TypeError, match='deletion_step'):
        HOOKS.build(dict(type='ExplanationAuditHook', deletion_step=10))
    with pytest.raises(ValueError, match='drise.num_masks must be an integer'):
        HOOKS.build(dict(type='ExplanationAuditHook', drise=dict(num_masks=0)))


def test_one_forward_per_image_and_method_and_detected_maps_are_the_detections_maps(fcos):
    """Matching and maps come from one explain_batch call per image and gradient method:
    the backbone runs once each (no separate model.predict); the detected objects' maps are
    explain_batch's maps of the matched detections."""
    data = loader(fcos, [0, 1])
    settings = dict(methods=('odam', 'gradcam'), sets=('detected', 'missed'),
                    score_thr=0.0065, iou_thr=0.5, verify=False)  # (verify: +1 predict)
    cfg = fcos.bbox_head.test_cfg
    cfg.score_thr, was = 0.0, cfg.score_thr  # the random-init head scores ~0.01
    calls = []
    try:
        add_detections_to_gt(fcos, data)
        original = fcos.extract_feat
        fcos.extract_feat = lambda *a, **k: calls.append(1) or original(*a, **k)
        try:
            raw = collect_explanation_scores(fcos, data, **settings)
        finally:
            del fcos.extract_feat
        check_detected_maps(fcos, data, settings, raw)
    finally:
        cfg.score_thr = was
    assert len(calls) == 2 * 2  # images x methods


def test_black_box_methods_score_explain_batchs_maps(fcos):
    """D-RISE and D-HSIC in the audit: the detected objects' scores are those of
    explain_batch's maps of the matched detections, with the audit's budgets."""
    data = loader(fcos, [0, 1])
    budgets = dict(drise=dict(num_masks=8, grid=4), dhsic=dict(num_designs=8, grid=4))
    settings = dict(methods=('drise', 'dhsic'), sets=('detected', 'missed'),
                    score_thr=0.0065, iou_thr=0.5, **budgets)
    cfg = fcos.bbox_head.test_cfg
    cfg.score_thr, was = 0.0, cfg.score_thr
    try:
        add_detections_to_gt(fcos, data)
        raw = collect_explanation_scores(fcos, data, **settings)
        check_detected_maps(fcos, data, settings, raw, **budgets)
    finally:
        cfg.score_thr = was


def add_detections_to_gt(fcos, data):
    """Make three of each image's detections (tiny boxes) GT objects, beside the scene's
    people, so that the detected set is not empty on a random-init detector."""
    for batch in data:
        b = fcos.data_preprocessor(batch, False)
        det = fcos.predict(b['inputs'], [x.clone() for x in b['data_samples']])[0]
        det = det.pred_instances
        gt = batch['data_samples'][0].gt_instances
        batch['data_samples'][0].gt_instances = InstanceData(
            bboxes=HorizontalBoxes(torch.cat([det.bboxes[[0, 3, 6]].cpu(), gt.bboxes.tensor])),
            labels=torch.cat([det.labels[[0, 3, 6]].cpu(), gt.labels]))


def check_detected_maps(fcos, data, settings, raw, rtol=1e-7, **explain_kw):
    """The detected objects' scores of ``raw`` == those of explain_batch's maps of the
    matched detections (``rtol``: a transformer's vectorised backward, chunked otherwise
    when the audit adds the missed objects, differs in the last bits)."""
    detected = 0
    for image, batch in zip([0, 1], data):  # img_id = the scene's seed
        b = fcos.data_preprocessor(batch, False)
        gt = b['data_samples'][0].gt_instances
        for method in settings['methods']:
            det = explain_batch(fcos, b['inputs'], b['data_samples'], method=method,
                                normalize=None, **explain_kw)[0]
            di, gi = match_detections(det.bboxes, det.scores, gt.bboxes, 0.5)
            got = raw['sets']['detected'][method]
            mine = [k for k, (i, _) in enumerate(got['gt_index']) if i == image]
            assert [got['gt_index'][k][1] for k in mine] == gi.tolist()
            want = localisation_scores(det.heatmaps[di], gt.bboxes, gi)
            for name, values in want.items():
                np.testing.assert_allclose([got[name][k] for k in mine], values, rtol=rtol)
            detected += len(di)
    assert detected >= 2 * 2 * 3  # the case is not empty
    assert all(len(raw['sets']['missed'][m]['odi']) > 0 for m in settings['methods'])


def test_summary_skips_and_counts_undefined_values():
    raw = dict(images=1, examples=[], sets={'missed': {'odam': dict(
        odi=[math.nan, math.nan], pointing_game=[1.0, math.nan], compactness=[0.5, 0.25],
        curves={'deletion': [], 'insertion': []})}})
    row = summarize_scores(raw)['missed']['odam']
    assert math.isnan(row['odi']) and row['pointing_game'] == 1 and row['objects'] == 2
    assert row['compactness'] == 0.375
    assert row['undefined'] == {'odi': 2, 'pointing_game': 1}


@pytest.mark.parametrize('meta, window', [
    (dict(img_shape=(120, 150), ori_shape=(150, 190)), (slice(0, 120), slice(0, 150))),
    (dict(img_shape=(160, 192), ori_shape=(150, 190), border=(5., 155., 1., 191.)),
     (slice(5, 155), slice(1, 191)))])
def test_deletion_maps_lie_where_the_pipeline_put_the_image(meta, window):
    """The audit's maps on the network input (what deletion / insertion remove pixels by):
    resized into the image's window (top-left, or CenterNet's pasted canvas), below every
    map value in the padding."""
    (top, left), (h, w) = image_window(meta)
    assert (slice(top, top + h), slice(left, left + w)) == window
    on_input = _maps_on_input(torch.ones(2, *meta['ori_shape']), meta, (176, 200))
    inside = torch.zeros(176, 200, dtype=torch.bool)
    inside[window] = True
    assert torch.equal(on_input[:, inside], torch.ones(2, int(inside.sum())))
    assert (on_input[:, ~inside] == -1).all()
