"""The explanation audit as an mmengine hook: after training and/or after testing."""
from __future__ import annotations

import os.path as osp

from mmengine.dataset import pseudo_collate
from mmengine.dist import all_gather_object, get_rank, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.utils import ProgressBar

from odamtrain.evaluation.explanation_audit import (
    AuditSettings,
    collect_explanation_scores,
    merge_scores,
)
from odamtrain.visualization import format_audit_table, write_audit_report

__all__ = ['ExplanationAuditHook']


@HOOKS.register_module()
class ExplanationAuditHook(Hook):
    """Audit the model's explanations on the val (after training) or test (after testing)
    set: every method explains the same objects (well detected, and with ``sets`` the
    missed / misclassified ones) and every metric scores them
    (:func:`odamtrain.evaluation.explanation_audit.collect_explanation_scores`).

    Each rank audits its share of the images (every ``world_size``-th, from its rank), the
    raw scores are gathered, and rank 0 logs the method x metric table and writes
    ``<work_dir>/audit_<stage>/audit.json``, ``audit_curves.png`` and ``audit_methods.png``
    (one table per object set).

    Args:
        after_train (bool): run after training.
        after_test (bool): run after testing.
        max_images (int): at most this many images in all (0: all).
        methods: of :data:`odamtrain.explain.METHODS`; every method explains the same
            objects.
        target: the explained attribute of the gradient methods.
        sets: of ``('detected', 'missed', 'misclassified')``.
        iou_thr: detection-GT IoU above which an object is well detected.
        score_thr: the score below which an object counts as missed, and the success
            threshold of the insertion curve.
        deletion_steps: > 0 adds deletion / insertion AUCs, highest score and success.
        deletion_baseline: 'noise' (ODAM paper) or 'black' (VPS paper).
        evidence: of :data:`odamtrain.structures.EVIDENCES`.
        extra_evidences: more evidences whose AUCs are read from the same predictions (VPS
            Table 1: ``evidence='vps', extra_evidences=('class', 'iou')``).
        extent: 'box' (ODAM paper) or 'image' (VPS paper): the pixels changed in all.
        drise: :class:`~odamtrain.explain.DriseSettings` fields.
        dhsic: :class:`~odamtrain.explain.DhsicSettings` fields.
        vps: :class:`~odamtrain.explain.VpsSettings` fields.
        seed: of the deletion noise (the masks' seeds are ``drise`` / ``dhsic``'s own).

    The settings are :class:`~odamtrain.evaluation.explanation_audit.AuditSettings`,
    checked when the hook is built (a misspelt key or method fails with the config,
    before training).
    """
    priority = 'LOW'

    def __init__(self, after_train: bool = True, after_test: bool = True,
                 max_images: int = 0, *, methods=AuditSettings.methods,
                 target: str = AuditSettings.target, sets=AuditSettings.sets,
                 iou_thr: float = AuditSettings.iou_thr,
                 score_thr: float = AuditSettings.score_thr,
                 deletion_steps: int = AuditSettings.deletion_steps,
                 deletion_baseline: str = AuditSettings.deletion_baseline,
                 evidence: str = AuditSettings.evidence,
                 extra_evidences=AuditSettings.extra_evidences,
                 extent: str = AuditSettings.extent,
                 drise: dict | None = None, dhsic: dict | None = None,
                 vps: dict | None = None, seed: int = AuditSettings.seed):
        if type(max_images) is not int or max_images < 0:
            raise ValueError(f'ExplanationAuditHook: max_images must be an integer >= 0, '
                             f'got {max_images!r}')
        self.settings = AuditSettings(
            methods=methods, target=target, sets=sets, iou_thr=iou_thr, score_thr=score_thr,
            deletion_steps=deletion_steps, deletion_baseline=deletion_baseline,
            evidence=evidence, extra_evidences=extra_evidences, extent=extent, drise=drise,
            dhsic=dhsic, vps=vps, seed=seed)
        self.run_after_train = after_train
        self.run_after_test = after_test
        self.max_images = max_images

    def after_train(self, runner) -> None:
        if self.run_after_train:
            self._audit(runner, runner.val_dataloader, 'val')

    def after_test(self, runner) -> None:
        if self.run_after_test:
            self._audit(runner, runner.test_dataloader, 'test')

    def _audit(self, runner, loader, stage: str) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        dataset = loader.dataset
        world, rank = get_world_size(), get_rank()
        count = len(dataset) if not self.max_images else min(self.max_images, len(dataset))
        # this rank's images, one per batch, collated as mmdet's dataloaders do
        batches = (pseudo_collate([dataset[i]]) for i in range(rank, count, world))
        mine = len(range(rank, count, world))
        print_log(f'explanation audit ({stage}): {", ".join(self.settings.methods)} on '
                  f'{count} images', logger='current')
        was_training = model.training
        model.eval()
        try:
            raw = collect_explanation_scores(model, batches, self.settings,
                                             progress=ProgressBar(mine)
                                             if is_main_process() else None)
        finally:
            model.train(was_training)
        parts = all_gather_object(raw) if world > 1 else [raw]
        if is_main_process():
            merged = merge_scores(parts)
            out_dir = osp.join(runner.work_dir, f'audit_{stage}')
            table = write_audit_report(merged, out_dir, dict(
                images=merged['images'], **self.settings.to_dict()))
            print_log('explanation audit:\n' + format_audit_table(table)
                      + f'\n(written to {out_dir})', logger='current')
