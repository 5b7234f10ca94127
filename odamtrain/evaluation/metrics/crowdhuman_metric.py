"""CrowdHuman detection metric (AP50, MR^-2, JI) with mmdet 3.3's bugs worked around."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
from mmdet.evaluation.metrics.crowdhuman_metric import CrowdHumanMetric, Image
from mmdet.registry import METRICS
from mmengine.fileio import load

from odamtrain.datasets.odgt import OdgtError, read_odgt
from odamtrain.evaluation.functional import crowd_mask, set_recalls

__all__ = ['CrowdHumanDetMetric']


class _EvalImage(Image):
    """mmdet's evaluation record; an image without gtboxes gives empty arrays instead of
    crashing (the parent returns one array where two are unpacked)."""

    @staticmethod
    def load_gt_boxes(dict_input, key_name, class_names):
        if len(dict_input[key_name]) < 1:
            return np.empty([0, 5]), np.empty([0, 5])
        return Image.load_gt_boxes(dict_input, key_name, class_names)


class _ListQueue(list):
    """The ``put_nowait`` of a queue, for running the JI matching in this process."""
    put_nowait = list.append


@METRICS.register_module()
class CrowdHumanDetMetric(CrowdHumanMetric):
    """CrowdHuman's AP50, MR^-2 (Caltech log-average miss rate on FPPI in [1e-2, 1]) and JI.

    mmdet's ``CrowdHumanMetric`` is the port of the CrowdDet evaluation toolkit
    (``crowdhuman-tools``); this subclass keeps its matching and formulas and fixes:

    * predictions are matched to annotations by image ID, so a subset of the val set or a
      shuffled loader evaluates correctly (the parent zips both files line by line and asserts);
    * images without ``gtboxes`` are evaluated (the parent crashes);
    * no ground truth at all gives NaN instead of a division by zero;
    * JI is computed in this process (the parent forks 10 x 10 processes by default;
      ``num_ji_process`` is accepted for config compatibility);
    * ``compare_matching_method='VOC'`` and ``eval_mode`` 1/2 are refused at construction
      with a clear message (both crash in mmdet 3.3; our detectors predict body boxes).

    Reported keys (under the ``crowd_human`` prefix): ``AP50``, ``MR-2``, ``JI`` and, with JI,
    ``recall``, ``crowd_recall``, ``sparse_recall`` at the score threshold of the best JI (the
    ODAM paper's crowd / sparse sets, :mod:`odamtrain.evaluation.functional.crowd_recall`).

    Args:
        ann_file (str): the ``.odgt`` annotation file.
        num_ji_process (int): accepted for config compatibility (JI runs in this process).
        **kwargs: mmdet's ``CrowdHumanMetric`` arguments (``metric``, ``format_only``,
            ``outfile_prefix``, ...).

    Raises:
        ValueError: ``compare_matching_method='VOC'`` or ``eval_mode`` 1 / 2.
    """

    def __init__(self, ann_file: str, num_ji_process: int = 1, **kwargs):
        if kwargs.get('compare_matching_method') is not None:
            raise ValueError("CrowdHumanDetMetric: compare_matching_method='VOC' crashes in "
                             'mmdet 3.3; use None (Caltech matching, as the CrowdHuman toolkit)')
        if kwargs.get('eval_mode', 0) != 0:
            raise ValueError('CrowdHumanDetMetric: only eval_mode=0 (full body boxes) is '
                             f'supported, got {kwargs["eval_mode"]}')
        super().__init__(ann_file=ann_file, num_ji_process=num_ji_process, **kwargs)

    def load_eval_samples(self, result_file: str) -> dict:
        gt = {r['ID']: r for r in read_odgt(self.ann_file)}
        samples = OrderedDict()
        for pred in load(result_file):
            if pred['ID'] not in gt:
                raise OdgtError(f'{self.ann_file}: no annotation for predicted image ID '
                                f'{pred["ID"]!r}; expected the ann_file of the evaluated set')
            sample = _EvalImage(self.eval_mode)
            sample.load(gt[pred['ID']], 'box', None, ['background', 'person'], True)
            sample.load(pred, 'box', None, ['background', 'person'], False)
            sample.clip_all_boader()
            samples[pred['ID']] = sample
        return samples

    @staticmethod
    def eval_ap(score_list, gt_num, img_num):
        return CrowdHumanMetric.eval_ap(score_list, gt_num, img_num) if gt_num > 0 else np.nan

    def eval_mr(self, score_list, gt_num, img_num):
        if gt_num <= 0 or not score_list:
            return np.nan if gt_num <= 0 else 1.0
        with np.errstate(divide='ignore'):
            return super().eval_mr(score_list, gt_num, img_num)

    def eval_ji(self, samples):
        """Best JI over score thresholds 0.0 .. 0.9 (computed in this process); also sets
        the crowd / sparse recalls at that threshold (:meth:`set_recalls`)."""
        ratios = []
        for i in range(10):
            results = _ListQueue()
            self.compute_ji_with_ignore(results, samples, 0.1 * i)
            ratios.append(self.gather(results)[1])
        best = int(np.nanargmax(ratios)) if not np.isnan(ratios).all() else 0
        self._recalls = self.set_recalls(samples, 0.1 * best)
        return max(ratios)

    def set_recalls(self, samples: dict, score_thr: float) -> dict:
        """Recall of all / crowd / sparse GT persons (paper A.4.2) with the JI matching of the
        detections scoring above ``score_thr``.

        Args:
            samples: image ID -> the evaluation toolkit's image record (GT and detections).
            score_thr: the detections' score threshold.

        Returns:
            dict: ``recall``, ``crowd_recall``, ``sparse_recall`` (NaN for an empty set).
        """
        matched, crowd = [], []
        for record in samples.values():
            gt = record.gt_boxes[record.gt_boxes[:, -1] != -1, :4]
            dt = record.dt_boxes[record.dt_boxes[:, -1] > score_thr, :-1]
            hit = np.zeros(len(gt), bool)
            for _, j in self.compute_ji_matching(dt, gt):
                hit[j] = True
            matched.append(hit)
            crowd.append(crowd_mask(gt))
        return set_recalls(matched, crowd)

    @staticmethod
    def gather(results):
        if not any(r['n'] != 0 or r['m'] != 0 for r in results):
            return 'no boxes', np.nan
        return CrowdHumanMetric.gather(results)

    def compute_metrics(self, results: list) -> dict:
        out = super().compute_metrics(results)
        names = {'mAP': 'AP50', 'mMR': 'MR-2', 'JI': 'JI'}
        metrics = OrderedDict((names[k], v) for k, v in out.items())
        if 'JI' in metrics:
            metrics.update((k, round(v, 4)) for k, v in self._recalls.items())
        return metrics
