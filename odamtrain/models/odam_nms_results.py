"""What both Odam-NMS heads do with their explained candidates."""
from __future__ import annotations

from mmdet.structures.bbox import scale_boxes

from odamtrain.ops import odam_nms_keep

__all__ = ['odam_nms_results']


def odam_nms_results(cands: list, batch_img_metas: list, nms_cfg: dict, max_per_img: int,
                     rescale: bool = True) -> list:
    """Per image: Odam-NMS of the candidates (InstanceData with ``bboxes`` in original
    pixels, ``scores``, ``labels``, ``heatmaps`` and bookkeeping fields), at most
    ``max_per_img`` kept, in mmdet's result format. The candidates are not changed.

    ``heatmaps`` stay only with ``nms_cfg['keep_heatmaps']``; boxes go back to the network
    input's scale when ``rescale`` is False.
    """
    results = []
    for cand, meta in zip(cands, batch_img_metas):
        res = cand[odam_nms_keep(cand, nms_cfg, max_per_img)]
        for key in list(res.keys()):
            if key not in ('bboxes', 'scores', 'labels', 'heatmaps'):
                res.pop(key)
        if not nms_cfg.get('keep_heatmaps', False):
            del res.heatmaps
        if not rescale:
            res.bboxes = scale_boxes(res.bboxes, meta['scale_factor'])
        results.append(res)
    return results
