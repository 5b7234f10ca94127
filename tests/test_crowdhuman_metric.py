import json

import numpy as np
import pytest
import torch
from mmdet.evaluation import CrowdHumanMetric

from odamtrain.datasets import OdgtError
from odamtrain.evaluation import CrowdHumanDetMetric

RNG = np.random.default_rng(0)


def _records(n_img=6, n_box=5):
    recs = []
    for i in range(n_img):
        boxes = []
        for _ in range(n_box):
            x, y = RNG.uniform(0, 200, 2)
            w, h = RNG.uniform(20, 60), RNG.uniform(60, 150)
            boxes.append(dict(tag='person', fbox=[x, y, w, h], vbox=[x, y, w, h],
                              hbox=[x, y, 10, 10], extra=dict(ignore=0)))
        recs.append(dict(ID=f'img{i}', gtboxes=boxes))
    return recs


def _sample(rec, noise=8.0, n_fp=2):
    gt = np.array([[b['fbox'][0], b['fbox'][1], b['fbox'][0] + b['fbox'][2],
                    b['fbox'][1] + b['fbox'][3]] for b in rec['gtboxes']]).reshape(-1, 4)
    det = gt + RNG.normal(0, noise, gt.shape)
    det = np.concatenate([det, RNG.uniform(0, 250, (n_fp, 2)).repeat(2, 1) + [0, 0, 40, 90]])
    scores = RNG.uniform(0.05, 1, len(det))
    return dict(img_id=rec['ID'], ori_shape=(400, 300),
                pred_instances=dict(bboxes=torch.tensor(det, dtype=torch.float32),
                                    scores=torch.tensor(scores, dtype=torch.float32)))


def _evaluate(metric, samples):
    metric.process({}, samples)
    return metric.compute_metrics(metric.results)


@pytest.fixture
def ann(tmp_path):
    recs = _records()
    path = tmp_path / 'annotation_val.odgt'
    path.write_text(''.join(json.dumps(r) + '\n' for r in recs))
    return str(path), recs


def test_equals_mmdet_metric_on_aligned_input(ann):
    path, recs = ann
    samples = [_sample(r) for r in recs]
    ours = _evaluate(CrowdHumanDetMetric(ann_file=path), samples)
    theirs = _evaluate(CrowdHumanMetric(ann_file=path, num_ji_process=2), samples)
    assert ours['AP50'] == pytest.approx(theirs['mAP'])
    assert ours['MR-2'] == pytest.approx(theirs['mMR'])
    assert ours['JI'] == pytest.approx(theirs['JI'])
    assert 0.2 < ours['AP50'] < 1  # a non-trivial case


def test_subset_and_shuffled_order(ann):
    """mmdet asserts on this; ours matches predictions to annotations by ID."""
    path, recs = ann
    samples = [_sample(r) for r in recs[:4]]
    ordered = _evaluate(CrowdHumanDetMetric(ann_file=path), samples)
    shuffled = _evaluate(CrowdHumanDetMetric(ann_file=path), samples[::-1])
    assert shuffled == pytest.approx(ordered)
    with pytest.raises(AssertionError):
        _evaluate(CrowdHumanMetric(ann_file=path, num_ji_process=1), samples[::-1])
    # the subset is evaluated on its own images only: perfect boxes give AP = 1 - 1/N
    perfect = []
    for r in recs[:4]:
        s = _sample(r, noise=0.0, n_fp=0)
        s['pred_instances']['scores'] = torch.linspace(1, 0.5, len(r['gtboxes']))
        perfect.append(s)
    res = _evaluate(CrowdHumanDetMetric(ann_file=path), perfect)
    n_gt = sum(len(r['gtboxes']) for r in recs[:4])
    assert res['AP50'] == pytest.approx(1 - 1 / n_gt, abs=1e-4)
    assert res['JI'] == pytest.approx(1.0, abs=1e-4)
    assert res['MR-2'] == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_ap_and_ji(tmp_path):
    """2 GT, 3 detections: TP (0.9), FP (0.8), TP (0.7).
    Precision/recall points: (0.5, 1), (0.5, 0.5), (1, 2/3); trapezoids: 0 + 0.5 * (0.5 +
    2/3) / 2 = 0.29167. JI = k / (m + n - k) with k matches, m GT, n detections."""
    rec = dict(ID='a', gtboxes=[dict(tag='person', fbox=[0, 0, 10, 20]),
                                dict(tag='person', fbox=[50, 0, 10, 20])])
    path = tmp_path / 'annotation_val.odgt'
    path.write_text(json.dumps(rec) + '\n')
    sample = dict(img_id='a', ori_shape=(100, 100), pred_instances=dict(
        bboxes=torch.tensor([[0, 0, 10, 20], [80, 80, 90, 90], [50, 0, 60, 20.]]),
        scores=torch.tensor([0.9, 0.8, 0.7])))
    res = _evaluate(CrowdHumanDetMetric(ann_file=str(path)), [sample])
    assert res['AP50'] == pytest.approx(0.5 * (0.5 + 2 / 3) / 2, abs=1e-4)
    # JI is the best over score thresholds 0.0 .. 0.9 (keep score > t): t < 0.7 -> 2/3,
    # 0.7 -> k=1, n=2: 1/3, 0.8 -> k=1, n=1: 1/2, 0.9 -> 0
    assert res['JI'] == pytest.approx(2 / 3, abs=1e-4)


def test_image_without_gtboxes(ann, tmp_path):
    path, recs = ann
    recs = recs + [dict(ID='empty', gtboxes=[])]
    p = tmp_path / 'with_empty.odgt'
    p.write_text(''.join(json.dumps(r) + '\n' for r in recs))
    samples = [_sample(r) for r in recs[:-1]]
    base = _evaluate(CrowdHumanDetMetric(ann_file=str(p)), samples)
    empty = dict(img_id='empty', ori_shape=(400, 300), pred_instances=dict(
        bboxes=torch.tensor([[0, 0, 50, 100.]]), scores=torch.tensor([0.99])))
    res = _evaluate(CrowdHumanDetMetric(ann_file=str(p)), samples + [empty])
    assert res['AP50'] < base['AP50']  # its detection is a false positive at the top score
    only_empty = _evaluate(CrowdHumanDetMetric(ann_file=str(p)), [empty])
    assert np.isnan(only_empty['AP50']) and np.isnan(only_empty['MR-2'])


def test_unknown_prediction_id_and_refused_options(ann):
    path, _ = ann
    bad = dict(img_id='nope', ori_shape=(10, 10), pred_instances=dict(
        bboxes=torch.zeros(0, 4), scores=torch.zeros(0)))
    with pytest.raises(OdgtError, match="predicted image ID 'nope'"):
        _evaluate(CrowdHumanDetMetric(ann_file=path), [bad])
    with pytest.raises(ValueError, match='VOC'):
        CrowdHumanDetMetric(ann_file=path, compare_matching_method='VOC')
    with pytest.raises(ValueError, match='eval_mode'):
        CrowdHumanDetMetric(ann_file=path, eval_mode=1)


def test_crowd_and_sparse_recall_hand_computed(tmp_path):
    """GT A and B overlap (IoU 80 / 120 = 0.67: the crowd set), C stands alone (sparse).
    Detections hit A and C: at the best-JI threshold recall = 2/3, crowd 1/2, sparse 1/1
    (plain NMS at 0.5 would remove any detection of B kept next to A's)."""
    from odamtrain.evaluation import crowd_mask
    boxes = [[0, 0, 10, 20], [2, 0, 10, 20], [50, 0, 10, 20]]  # xywh
    rec = dict(ID='a', gtboxes=[dict(tag='person', fbox=b) for b in boxes])
    path = tmp_path / 'annotation_val.odgt'
    path.write_text(json.dumps(rec) + '\n')
    xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes], float)
    assert crowd_mask(xyxy).tolist() == [True, True, False]
    sample = dict(img_id='a', ori_shape=(100, 100), pred_instances=dict(
        bboxes=torch.tensor([[0, 0, 10, 20], [50, 0, 60, 20.]]), scores=torch.tensor([0.9, 0.8])))
    res = _evaluate(CrowdHumanDetMetric(ann_file=str(path)), [sample])
    assert res['recall'] == pytest.approx(2 / 3, abs=1e-4)
    assert res['crowd_recall'] == pytest.approx(0.5) and res['sparse_recall'] == 1.0
