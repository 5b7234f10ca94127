"""What both Odam-NMS heads do with their explained candidates."""
from __future__ import annotations

from mmdet.structures.bbox import scale_boxes

from odamtrain.ops import batched_odam_nms

__all__ = ['MAP_KEYS', 'odam_nms_results']

# keys of an odam_nms config that configure the heat maps rather than the operator
MAP_KEYS = ('target', 'mode', 'map_size', 'keep_heatmaps')


def odam_nms_results(cands: list, batch_img_metas: list, nms_cfg: dict, max_per_img: int,
                     rescale: bool = True) -> list:
    """Per image: Odam-NMS of the candidates (InstanceData with ``bboxes`` in original
    pixels, ``scores``, ``labels``, ``heatmaps`` and bookkeeping fields), at most
    ``max_per_img`` kept, in mmdet's result format. The candidates are not changed.

    ``heatmaps`` stay only with ``nms_cfg['keep_heatmaps']``; boxes go back to the network
    input's scale when ``rescale`` is False.
    """
    op_cfg = {k: v for k, v in nms_cfg.items() if k not in MAP_KEYS}
    results = []
    for cand, meta in zip(cands, batch_img_metas):
        _, keep = batched_odam_nms(cand.bboxes, cand.scores, cand.heatmaps, cand.labels, op_cfg)
        res = cand[keep[:max_per_img] if max_per_img > 0 else keep]
        for key in list(res.keys()):
            if key not in ('bboxes', 'scores', 'labels', 'heatmaps'):
                res.pop(key)
        if not nms_cfg.get('keep_heatmaps', False):
            del res.heatmaps
        if not rescale:
            res.bboxes = scale_boxes(res.bboxes, meta['scale_factor'])
        results.append(res)
    return results
