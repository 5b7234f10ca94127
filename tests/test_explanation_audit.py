"""The audit's object sets and scores: the failure sets follow their definition, each
object's scores are those of its own map, and sharding the images (ranks) changes nothing."""
import math

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.structures import InstanceData

from odamtrain.apis import explain_batch
from odamtrain.datasets import render_scene
from odamtrain.evaluation.explanation_audit import (
    collect_explanation_scores,
    localisation_scores,
    merge_scores,
    summarize_scores,
)
from odamtrain.inference.batch import _source, _test_pipeline
from odamtrain.visualization import format_audit_table

from .odam_fixtures import build_detector

SETTINGS = dict(methods=('odam', 'drise'), sets=('detected', 'missed'), score_thr=0.3,
                deletion_steps=2, drise=dict(num_masks=4))


@pytest.fixture(scope='module')
def fcos():
    return build_detector('configs/fcos_tiny_fpn_synthetic.py')


def loader(model, seeds):
    """One collated batch per synthetic scene, with its GT (full boxes, class 0)."""
    out = []
    for seed in seeds:
        img, gtboxes = render_scene(np.random.default_rng([seed, 9, 9]))
        src = _source(img, seed)
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
    with pytest.raises(ValueError, match='sets must be among'):
        collect_explanation_scores(fcos, [], sets=('lost',))
    with pytest.raises(ValueError, match="extent must be 'box' or 'image'"):
        collect_explanation_scores(fcos, [], extent='all')


def test_summary_of_an_empty_metric_is_nan():
    raw = dict(images=1, examples=[], sets={'missed': {'odam': dict(
        odi=[math.nan], pointing_game=[1.0], curves={'deletion': [], 'insertion': []})}})
    row = summarize_scores(raw)['missed']['odam']
    assert math.isnan(row['odi']) and row['pointing_game'] == 1 and row['objects'] == 1
