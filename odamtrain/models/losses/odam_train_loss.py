"""Odam-Train losses (Zhao & Chan, ICLR'23, Sec. 3.2, Eq. 3): pure functions on heat maps.

Shapes: N positive predictions (of one or several images), G GT objects among them, each
heat map flattened to D values on a grid common to the predictions of one image.

For GT object p with positives P_p, best b_p = the one whose predicted box has the highest
IoU with p's GT box (ties: the lowest index):

    L_con = sum_p sum_{n in P_p, n != b_p} -log cos(H_{b_p}, H_n)
    L_sep = sum_p sum_{m in P_q, q != p, same image} -log(1 - cos(H_{b_p}, H_m))

and the detector loss gains ``loss_weight * (L_con + L_sep) / N_pairs``. cos is clamped into
[eps, 1 - eps] (an all-zero map has cos 0: its pair costs -log(eps) and passes no gradient).
Pairs never join predictions of different images; every object has its own best.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ['OdamPairLosses', 'best_per_object', 'odam_pair_losses', 'top_per_object',
           'cap_positives', 'odam_loss_dict', 'odam_loss_config']

# what a head's ``odam_loss`` config may set, with defaults (loss_weight: per detector)
ODAM_LOSS_DEFAULTS = dict(second_order=False, max_positives=300,
                          max_positives_per_object=None, map_stride=16, eps=1e-4,
                          begin_epoch=0)


class OdamPairLosses(NamedTuple):
    consistency: torch.Tensor  # () L_con, summed over pairs
    separation: torch.Tensor  # () L_sep, summed over pairs
    num_consistency: torch.Tensor  # () int64 pairs in L_con
    num_separation: torch.Tensor  # () int64 pairs in L_sep


def _object_ids(gt_index: torch.Tensor, img_index: torch.Tensor | None) -> torch.Tensor:
    """(N,) dense ids 0..G-1 of the (image, GT) objects."""
    img = torch.zeros_like(gt_index) if img_index is None else img_index
    return torch.unique(torch.stack([img, gt_index], 1), dim=0, return_inverse=True)[1]


def best_per_object(object_id: torch.Tensor, ious: torch.Tensor) -> torch.Tensor:
    """(G,) for each object 0..G-1 the index of its positive with the highest IoU (ties: the
    lowest index). object_id (N,) in 0..G-1, every id present; ious (N,)."""
    g = int(object_id.max()) + 1
    top = ious.new_full((g,), -float('inf')).scatter_reduce(0, object_id, ious, 'amax')
    cand = torch.where(ious == top[object_id], torch.arange(len(ious), device=ious.device),
                       len(ious))
    return cand.new_full((g,), len(ious)).scatter_reduce(0, object_id, cand, 'amin')


def odam_pair_losses(maps: torch.Tensor, gt_index: torch.Tensor, ious: torch.Tensor,
                     img_index: torch.Tensor | None = None,
                     eps: float = 1e-4) -> OdamPairLosses:
    """Summed consistency and separation losses of the positives' heat maps.

    Args:
        maps: (N, ...) heat maps (any trailing shape, flattened), comparable within an image.
        gt_index: (N,) int, the GT object (index within its image) each is assigned to.
        ious: (N,) IoU of each prediction's box with its GT box (picks the best).
        img_index: (N,) int image of each prediction; None = all from one image.
        eps: cos is clamped into [eps, 1 - eps].
    """
    zero = maps.sum() * 0
    none = torch.zeros((), dtype=torch.long, device=maps.device)
    if maps.shape[0] == 0:
        return OdamPairLosses(zero, zero, none, none)
    obj = _object_ids(gt_index, img_index)
    best = best_per_object(obj, ious)  # [G]
    img = torch.zeros_like(gt_index) if img_index is None else img_index
    v = F.normalize(maps.flatten(1), dim=1)
    cos = (v[best] @ v.T).clamp(eps, 1 - eps)  # [G, N]
    member = obj[None, :] == torch.arange(len(best), device=obj.device)[:, None]
    con = member.clone()
    con[torch.arange(len(best), device=obj.device), best] = False
    sep = ~member & (img[best][:, None] == img[None, :])
    return OdamPairLosses(-(torch.log(cos) * con).sum(), -(torch.log1p(-cos) * sep).sum(),
                          con.sum(), sep.sum())


def odam_loss_dict(maps: torch.Tensor, gt_index: torch.Tensor, ious: torch.Tensor,
                   img_index: torch.Tensor | None, loss_weight: float,
                   eps: float = 1e-4) -> dict:
    """``loss_odam_con`` and ``loss_odam_sep``: ``loss_weight * L / N_pairs`` (they add up to
    the paper's ``loss_weight * (L_con + L_sep) / N``); 0 when there is no pair."""
    pair = odam_pair_losses(maps, gt_index, ious, img_index, eps)
    n = (pair.num_consistency + pair.num_separation).clamp(min=1).to(maps.dtype)
    return dict(loss_odam_con=loss_weight * pair.consistency / n,
                loss_odam_sep=loss_weight * pair.separation / n)


def top_per_object(object_id: torch.Tensor, ious: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: each object's ``k`` positives of highest IoU (ties: the lower index, so
    :func:`best_per_object`'s pick is always among them). object_id (N,) in 0..G-1."""
    by_iou = torch.argsort(ious, descending=True, stable=True)
    grouped = by_iou[torch.argsort(object_id[by_iou], stable=True)]  # by object, then IoU
    counts = torch.bincount(object_id[grouped])
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(ious), device=ious.device) - starts[object_id[grouped]]
    keep = torch.zeros(len(ious), dtype=torch.bool, device=ious.device)
    keep[grouped[rank < k]] = True
    return keep


def cap_positives(img_index: torch.Tensor, gt_index: torch.Tensor, ious: torch.Tensor,
                  max_per_img: int, max_per_object: int | None = None) -> torch.Tensor:
    """Sorted indices of the positives kept: with ``max_per_object`` only each object's
    ``max_per_object`` of highest IoU; then at most ``max_per_img`` per image, every
    object's best first (so each object keeps its reference), the rest drawn at random
    (torch's RNG)."""
    if len(ious) == 0:
        return torch.zeros(0, dtype=torch.long, device=ious.device)
    obj = _object_ids(gt_index, img_index)
    priority = torch.rand(len(ious), device=ious.device)
    priority[best_per_object(obj, ious)] += 1
    allowed = (top_per_object(obj, ious, max_per_object) if max_per_object is not None
               else torch.ones(len(ious), dtype=torch.bool, device=ious.device))
    keep = []
    for b in img_index.unique():
        idx = ((img_index == b) & allowed).nonzero()[:, 0]
        keep.append(idx[priority[idx].topk(min(max_per_img, len(idx))).indices])
    return torch.cat(keep).sort().values


def _check_int(key: str, value, low: int, expected: str = 'an int') -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f'odam_loss: {key} must be {expected} >= {low}, got {value!r}')


def odam_loss_config(cfg: dict | None, loss_weight: float) -> dict | None:
    """A head's ``odam_loss`` setting with defaults filled in (None: Odam-Train off).
    Keys: loss_weight (default per detector), second_order, max_positives (per image),
    max_positives_per_object (None: all; else each object's that many of highest IoU),
    map_stride, eps, begin_epoch (the 0-based epoch from which the losses are on; a warm-up
    before it)."""
    if cfg is None:
        return None
    unknown = set(cfg) - set(ODAM_LOSS_DEFAULTS) - {'loss_weight'}
    if unknown:
        raise ValueError(f'odam_loss: unknown key(s) {sorted(unknown)}; expected '
                         f"{sorted(ODAM_LOSS_DEFAULTS) + ['loss_weight']}")
    out = {**ODAM_LOSS_DEFAULTS, 'loss_weight': loss_weight, **cfg}
    _check_int('begin_epoch', out['begin_epoch'], 0)
    if out['max_positives_per_object'] is not None:
        _check_int('max_positives_per_object', out['max_positives_per_object'], 1,
                   'None or an int')
    return out
