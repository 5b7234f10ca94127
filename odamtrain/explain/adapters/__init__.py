"""Detector adapters: all knowledge of a detector's head internals (where each prediction
came from, how to recompute its attribute from the head outputs, the candidates before NMS).
Explainers, Odam-NMS, Odam-Train and the audit all go through :func:`build_adapter`."""
from __future__ import annotations

from .dense import (
    BOX_SIDES,
    DENSE_ADAPTERS,
    ATSSAdapter,
    AutoAssignAdapter,
    DenseHeadAdapter,
    DenseRows,
    FCOSAdapter,
    FoveaAdapter,
    GFLAdapter,
    RetinaAdapter,
    RTMDetAdapter,
    TOODAdapter,
    UnsupportedHeadError,
    YOLOXAdapter,
)
from .detr import DETRAdapter, DETRForward
from .roi import ROI_ADAPTERS, CascadeRoIAdapter, RoIForward, StandardRoIAdapter

__all__ = ['build_adapter', 'dense_adapter', 'roi_adapter', 'UnsupportedDetectorError',
           'supported_heads', 'DenseHeadAdapter', 'DETRAdapter', 'DETRForward',
           'DenseRows', 'StandardRoIAdapter', 'CascadeRoIAdapter', 'RoIForward', 'BOX_SIDES',
           'RetinaAdapter', 'ATSSAdapter', 'GFLAdapter', 'FCOSAdapter', 'AutoAssignAdapter',
           'FoveaAdapter', 'TOODAdapter', 'RTMDetAdapter', 'YOLOXAdapter']


class UnsupportedDetectorError(TypeError):
    """A detector whose head no adapter covers; says which head and what is supported."""


def supported_heads() -> list[str]:
    """The mmdet head classes (and their subclasses that keep the post-processing) that
    have an adapter."""
    return [a.head_type.__name__ for a in DENSE_ADAPTERS + ROI_ADAPTERS + (DETRAdapter,)]


def _unsupported(owner, head, why: str) -> UnsupportedDetectorError:
    where = type(head).__name__ if owner is head else (
        f'{type(owner).__name__} with {type(head).__name__}')
    return UnsupportedDetectorError(
        f'{where}: {why}. odamtrain explains '
        f'detectors whose head is one of {", ".join(supported_heads())} (or a subclass that '
        'keeps its post-processing)')


def _adapter_of(head, table, owner):
    for cls in type(head).__mro__:
        adapter = next((a for a in table if a.head_type is cls), None)
        if adapter is not None:
            try:
                return adapter(head)
            except UnsupportedHeadError as e:
                raise _unsupported(owner, head, str(e)) from None
    raise _unsupported(owner, head, 'no adapter covers this head')


def dense_adapter(head, owner=None) -> DenseHeadAdapter:
    """The adapter of a one-stage dense head (by its most specific class covered)."""
    return _adapter_of(head, DENSE_ADAPTERS, owner or head)


def roi_adapter(roi_head, owner=None) -> StandardRoIAdapter:
    """The adapter of a two-stage detector's RoI head."""
    return _adapter_of(roi_head, ROI_ADAPTERS, owner or roi_head)


def build_adapter(model):
    """The adapter of an mmdet detector: a two-stage one's RoI head (``roi_head``) or a
    one-stage one's dense head (``bbox_head``), by the most specific head class covered.

    Raises:
        UnsupportedDetectorError: before any work, naming the head and what is supported.
    """
    if hasattr(model, 'roi_head'):
        return roi_adapter(model.roi_head, model)
    if isinstance(getattr(model, 'bbox_head', None), DETRAdapter.head_type):
        try:
            return DETRAdapter(model)
        except UnsupportedHeadError as e:
            raise _unsupported(model, model.bbox_head, str(e)) from None
    if hasattr(model, 'bbox_head'):
        return dense_adapter(model.bbox_head, model)
    raise UnsupportedDetectorError(
        f'{type(model).__name__}: expected an mmdet detector with a bbox_head (one-stage) or '
        f'roi_head (two-stage); supported heads: {", ".join(supported_heads())}')
