"""Odam-Train (Zhao & Chan, ICLR'23, Sec. 3.2, Eq. 3): the losses (pure functions on heat
maps), the maps of a training step's positives, and the wiring into any covered head.

Shapes: N positive predictions (of one or several images), G GT objects among them, each
heat map flattened to D values on a grid common to the predictions of one image.

For GT object p with positives P_p, best b_p = the one whose predicted box has the highest
IoU with p's GT box (ties: the lowest index):

    L_con = sum_p sum_{n in P_p, n != b_p} -log cos(H_{b_p}, H_n)
    L_sep = sum_p sum_{m in P_q, q != p, same image} -log(1 - cos(H_{b_p}, H_m))

and the detector loss gains ``loss_weight * (L_con + L_sep) / N_pairs``. cos is clamped into
[eps, 1 - eps] (an all-zero map has cos 0: its pair costs -log(eps) and passes no gradient).
Pairs never join predictions of different images; every object has its own best.

In a detector: ``model.train_cfg.odam_loss = dict(loss_weight=..., ...)``
(:class:`OdamLossSettings`; any covered detector, Cascade R-CNN: every stage). The head's own
positives (its assigner / sampler, with their GT index:
:meth:`~odamtrain.explain.protocol.DetectorAdapter.train_positives`) are explained with ODAM
(Y = the assigned class's logit; dense: A = the FPN level, 'windows' gradients; two-stage:
A = the RoI features: :meth:`~odamtrain.explain.protocol.DetectorAdapter.train_maps`), their
maps put on a stride-16 grid, and the loss gains ``loss_odam_con`` / ``loss_odam_sep``
(:func:`odam_loss_dict`). A head's ``odam_loss_active`` (True;
:class:`odamtrain.engine.OdamTrainSwitchHook` sets it per epoch from ``begin_epoch``)
switches the two off, for a warm-up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from mmdet.models.roi_heads import CascadeRoIHead
from mmdet.models.utils import unpack_gt_instances

from odamtrain.explain import DenseTrainStep, RoITrainStep, head_adapter

__all__ = ['OdamPairLosses', 'best_per_object', 'odam_pair_losses', 'top_per_object',
           'cap_positives', 'odam_loss_dict', 'OdamLossSettings', 'odam_train_losses',
           'OdamTrainDenseMixin', 'OdamTrainRoIMixin', 'ODAM_LOSS_WEIGHTS']

# the authors' loss weights: one-stage (FCOS) 0.5, two-stage (Faster R-CNN) 0.2
ODAM_LOSS_WEIGHTS = dict(dense=0.5, roi=0.2)


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
    """For each object its positive with the highest IoU (ties: the lowest index).

    Args:
        object_id: (N,) in 0..G-1, every id present.
        ious: (N,).

    Returns:
        Tensor: (G,) int64 indices into the positives.
    """
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

    Returns:
        OdamPairLosses: ``consistency`` (L_con summed over the pairs of each object's best
        prediction with its others), ``separation`` (L_sep summed over the pairs of each
        best with the other objects' predictions of the image), and the pair counts.
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
    """The losses as mmdet logs and sums them: ``loss_weight * L / N_pairs`` each (they add up
    to the paper's ``loss_weight * (L_con + L_sep) / N``); 0 when there is no pair.

    Args:
        maps: (N, ...) the positives' heat maps.
        gt_index: (N,) GT object (within its image) of each.
        ious: (N,) IoU of each box with its GT box.
        img_index: (N,) image of each (None: one image).
        loss_weight: the weight.
        eps: cos is clamped into [eps, 1 - eps].

    Returns:
        dict: ``loss_odam_con`` and ``loss_odam_sep``, scalar tensors.
    """
    pair = odam_pair_losses(maps, gt_index, ious, img_index, eps)
    n = (pair.num_consistency + pair.num_separation).clamp(min=1).to(maps.dtype)
    return dict(loss_odam_con=loss_weight * pair.consistency / n,
                loss_odam_sep=loss_weight * pair.separation / n)


def top_per_object(object_id: torch.Tensor, ious: torch.Tensor, k: int) -> torch.Tensor:
    """Each object's ``k`` positives of highest IoU (ties: the lower index, so
    :func:`best_per_object`'s pick is always among them).

    Args:
        object_id: (N,) in 0..G-1.
        ious: (N,).
        k: positives per object.

    Returns:
        Tensor: (N,) bool.
    """
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
    """The positives Odam-Train keeps: with ``max_per_object`` only each object's
    ``max_per_object`` of highest IoU; then at most ``max_per_img`` per image, every object's
    best first (so each object keeps its reference), the rest drawn at random (torch's RNG).

    Args:
        img_index: (N,) image of each positive.
        gt_index: (N,) its GT object within the image.
        ious: (N,) IoU of its box with its GT box.
        max_per_img: at most this many per image.
        max_per_object: at most this many per object (None: all).

    Returns:
        Tensor: sorted int64 indices of the kept positives.
    """
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


@dataclass(frozen=True)
class OdamLossSettings:
    """A detector's ``train_cfg.odam_loss``, validated.

    Args:
        loss_weight: the losses' weight (default per detector: :data:`ODAM_LOSS_WEIGHTS`).
        second_order: differentiate the maps' gradients too (the head learns from the loss).
        max_positives: per image (each object's best first, the rest at random).
        max_positives_per_object: None (all), else each object's that many of highest IoU.
        map_stride: the common grid's stride in input pixels.
        eps: cos is clamped into [eps, 1 - eps].
        begin_epoch: the 0-based epoch from which the losses are on (a warm-up before it).
    """
    loss_weight: float
    second_order: bool = False
    max_positives: int = 300
    max_positives_per_object: int | None = None
    map_stride: int = 16
    eps: float = 1e-4
    begin_epoch: int = 0

    def __post_init__(self):
        if isinstance(self.loss_weight, bool) or not isinstance(self.loss_weight, (int, float)):
            raise ValueError(f'odam_loss: loss_weight must be a number, got '
                             f'{self.loss_weight!r}')
        if type(self.second_order) is not bool:
            raise ValueError(f'odam_loss: second_order must be True or False, got '
                             f'{self.second_order!r}')
        _check_int('max_positives', self.max_positives, 1)
        _check_int('map_stride', self.map_stride, 1)
        _check_int('begin_epoch', self.begin_epoch, 0)
        if self.max_positives_per_object is not None:
            _check_int('max_positives_per_object', self.max_positives_per_object, 1,
                       'None or an int')
        if not 0 < self.eps < 0.5:
            raise ValueError(f'odam_loss: eps must be in (0, 0.5), got {self.eps!r}')

    @classmethod
    def from_config(cls, cfg: dict | None, loss_weight: float):
        """The settings of an ``odam_loss`` config (None: Odam-Train off), ``loss_weight``
        the detector's default."""
        if cfg is None:
            return None
        names = [f.name for f in fields(cls)]
        unknown = set(cfg) - set(names)
        if unknown:
            raise ValueError(f'odam_loss: unknown key(s) {sorted(unknown)}; expected {names}')
        return cls(**{'loss_weight': loss_weight, **cfg})


# ------------------------------------------------------------------ in a detector
def odam_train_losses(adapter, step, settings: OdamLossSettings, grid_hw) -> dict:
    """The Odam-Train losses of a training step: the head's positives (capped by
    :func:`cap_positives`) and their maps on the ``grid_hw`` grid of stride
    ``settings.map_stride``, from the adapter.

    Args:
        adapter: the detector's :class:`~odamtrain.explain.DetectorAdapter`.
        step: the adapter's record of the training step (its train step type).
        settings: the validated ``odam_loss`` settings.
        grid_hw: (h, w) of the grid the maps are compared on.

    Returns:
        dict: ``loss_odam_con`` and ``loss_odam_sep`` (:func:`odam_loss_dict`).
    """
    pos = adapter.train_positives(step)
    pos = pos[cap_positives(pos.img, pos.gt_index, pos.ious, settings.max_positives,
                            settings.max_positives_per_object)]
    maps = adapter.train_maps(step, pos, grid_hw, settings.map_stride, settings.second_order)
    return odam_loss_dict(maps, pos.gt_index, pos.ious, pos.img, settings.loss_weight,
                          settings.eps)


class _OdamTrainMixin:
    odam_mixin = True  # the adapters look through it at the head's own methods
    odam_loss: OdamLossSettings | None = None
    odam_loss_active = True

    @property
    def odam_loss_on(self) -> bool:
        return self.odam_loss is not None and self.odam_loss_active


class OdamTrainDenseMixin(_OdamTrainMixin):
    """Odam-Train in a one-stage dense head's ``loss``."""

    def loss(self, x, batch_data_samples) -> dict:
        if not self.odam_loss_on:
            return super().loss(x, batch_data_samples)
        adapter = head_adapter(self)
        gts, gts_ignore, metas = unpack_gt_instances(batch_data_samples)
        fwd = adapter.forward_features(x, metas)
        with adapter.recording_positives() as recorded:
            losses = self.loss_by_feat(*fwd.outputs, gts, metas, gts_ignore)
        grid = tuple(math.ceil(s / self.odam_loss.map_stride)
                     for s in metas[0]['batch_input_shape'])
        losses.update(odam_train_losses(adapter, DenseTrainStep(fwd, recorded, gts, metas),
                                        self.odam_loss, grid))
        return losses


class OdamTrainRoIMixin(_OdamTrainMixin):
    """Odam-Train in a two-stage RoI head's ``bbox_loss`` (Standard: ``(x,
    sampling_results)``, Cascade: ``(stage, x, sampling_results)``), per stage."""

    def bbox_loss(self, *args, **kwargs):
        results = super().bbox_loss(*args, **kwargs)
        if self.odam_loss_on:
            stage = args[0] if isinstance(self, CascadeRoIHead) else None
            x, sampling_results = args[-2], args[-1]
            extractor = self.bbox_roi_extractor if stage is None else \
                self.bbox_roi_extractor[stage]
            stride = extractor.featmap_strides[0]
            grid = tuple(math.ceil(n * stride / self.odam_loss.map_stride)
                         for n in x[0].shape[-2:])
            results['loss_bbox'].update(odam_train_losses(
                head_adapter(self), RoITrainStep(stage, results, sampling_results),
                self.odam_loss, grid))
        return results
