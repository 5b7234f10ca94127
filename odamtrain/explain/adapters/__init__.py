"""Detector adapters: all knowledge of a detector's head internals, behind one protocol
(:class:`~odamtrain.explain.protocol.DetectorAdapter`). Explainers, Odam-NMS, Odam-Train and
the audit all go through :func:`build_adapter`, which refuses before any work a detector
that no adapter reproduces exactly."""
from __future__ import annotations

from mmdet.models.dense_heads import DETRHead
from mmdet.models.roi_heads import BaseRoIHead
from torch.nn import ModuleList

from ..protocol import DetectorAdapter, UnsupportedDetectorError
from .dense import (
    DENSE_ADAPTERS,
    ATSSAdapter,
    AutoAssignAdapter,
    CenterNetAdapter,
    CondInstAdapter,
    DenseHeadAdapter,
    DenseRows,
    DenseTrainStep,
    FCOSAdapter,
    FoveaAdapter,
    GFLAdapter,
    PAAAdapter,
    RetinaAdapter,
    RTMDetAdapter,
    RTMDetInsAdapter,
    SABLRetinaAdapter,
    TOODAdapter,
    YOLOv3Adapter,
    YOLOXAdapter,
)
from .detr import DETRAdapter, DETRForward
from .grounding_dino import GroundingDINOAdapter, GroundingForward, require_prompts
from .roi import (
    ROI_ADAPTERS,
    CascadeRoIAdapter,
    CrowdDetRoIAdapter,
    DoubleHeadRoIAdapter,
    GridRoIAdapter,
    HTCRoIAdapter,
    MaskScoringRoIAdapter,
    RoIForward,
    RoITrainStep,
    SABLCascadeRoIAdapter,
    SABLRoIAdapter,
    SCNetRoIAdapter,
    StandardRoIAdapter,
)
from .sparse import SparseForward, SparseRoIAdapter

__all__ = ['build_adapter', 'head_adapter', 'UnsupportedDetectorError', 'supported_heads',
           'DetectorAdapter', 'DenseHeadAdapter', 'DETRAdapter', 'DETRForward',
           'GroundingDINOAdapter', 'GroundingForward', 'require_prompts', 'DenseRows',
           'DenseTrainStep', 'StandardRoIAdapter', 'CascadeRoIAdapter',
           'DoubleHeadRoIAdapter', 'HTCRoIAdapter', 'SCNetRoIAdapter', 'MaskScoringRoIAdapter',
           'CrowdDetRoIAdapter', 'GridRoIAdapter', 'SABLRoIAdapter', 'SABLCascadeRoIAdapter',
           'RoIForward',
           'RoITrainStep', 'RetinaAdapter', 'ATSSAdapter', 'GFLAdapter', 'FCOSAdapter',
           'AutoAssignAdapter', 'FoveaAdapter', 'TOODAdapter', 'RTMDetAdapter', 'YOLOXAdapter',
           'PAAAdapter', 'CondInstAdapter', 'RTMDetInsAdapter', 'CenterNetAdapter',
           'YOLOv3Adapter', 'SABLRetinaAdapter', 'SparseRoIAdapter', 'SparseForward',
           'ADAPTERS']

# the RoI heads' adapters: region-based, then query-based
TWO_STAGE_ADAPTERS = ROI_ADAPTERS + (SparseRoIAdapter,)
DETR_ADAPTERS = (DETRAdapter, GroundingDINOAdapter)
ADAPTERS = DENSE_ADAPTERS + TWO_STAGE_ADAPTERS + DETR_ADAPTERS


def supported_heads() -> list[str]:
    """The mmdet head classes (and their subclasses that keep what the adapter reproduces)
    that have an adapter.

    Returns:
        list[str]: class names.
    """
    return [a.head_type.__name__ + (f' with {a.box_head_type.__name__}' if a.box_head_type
                                    else '') for a in ADAPTERS]


def _box_head(head):
    """A RoI head's (last) box head, or None."""
    box_head = getattr(head, 'bbox_head', None)
    return box_head[-1] if isinstance(box_head, ModuleList) else box_head


def _family(head, table):
    """The adapter class of ``head``'s most specific class covered, and among those of that
    class the one of its box head's class (SABL's), else the one for any box head; or
    None."""
    box_head = _box_head(head)
    for cls in type(head).__mro__:
        adapters = [a for a in table if a.head_type is cls]
        adapter = next((a for a in adapters if a.box_head_type is not None
                        and isinstance(box_head, a.box_head_type)), None)
        adapter = adapter or next((a for a in adapters if a.box_head_type is None), None)
        if adapter is not None:
            return adapter
    return None


def _refusal(what: str, why: str) -> UnsupportedDetectorError:
    return UnsupportedDetectorError(
        f'{what}: {why}. odamtrain explains detectors whose head is one of '
        f'{", ".join(supported_heads())}, or a subclass that keeps what its adapter '
        'reproduces (docs/coverage.md)')


def _heads(model) -> str:
    """The head modules a detector has, for a refusal that names them."""
    names = [f'{name}={type(m).__name__}' for name, m in model.named_children()
             if name.endswith('head') and m is not None]
    return ', '.join(names) or 'no head module'


def build_adapter(model) -> DetectorAdapter:
    """The adapter of an mmdet detector, chosen by its RoI head (two-stage) or its box head
    (one-stage, DETR-like), most specific class first, and checked against the model's own
    code (:meth:`~odamtrain.explain.protocol.DetectorAdapter.check`).

    Args:
        model: an mmdet detector.

    Returns:
        DetectorAdapter: the family's adapter of ``model``.

    Raises:
        UnsupportedDetectorError: before any work, naming the detector, the part and the
            method that differ, and what is supported.
    """
    roi_head = getattr(model, 'roi_head', None)
    bbox_head = getattr(model, 'bbox_head', None)
    if roi_head is not None:
        head, table = roi_head, TWO_STAGE_ADAPTERS
    elif isinstance(bbox_head, DETRHead):
        head, table = bbox_head, DETR_ADAPTERS
    elif bbox_head is not None:
        head, table = bbox_head, DENSE_ADAPTERS
    else:
        raise _refusal(type(model).__name__, f'no box head or RoI head to explain '
                       f'({_heads(model)})')
    what = f'{type(model).__name__} with {type(head).__name__}'
    cls = _family(head, table)
    if cls is None:
        raise _refusal(what, 'no adapter covers this head')
    adapter = cls(head, model)
    try:
        adapter.check()
    except UnsupportedDetectorError as e:
        raise _refusal(what, str(e)) from None
    return adapter


def head_adapter(head) -> DetectorAdapter:
    """The adapter of a head alone (Odam-NMS and Odam-Train inside the head), checked on the
    head's parts.

    Args:
        head: an mmdet dense head or RoI head.

    Returns:
        DetectorAdapter

    Raises:
        UnsupportedDetectorError: naming the head and what differs.
    """
    cls = _family(head, TWO_STAGE_ADAPTERS if isinstance(head, BaseRoIHead) else DENSE_ADAPTERS)
    if cls is None:
        raise _refusal(type(head).__name__, 'no adapter covers this head')
    adapter = cls(head)
    try:
        adapter.check()
    except UnsupportedDetectorError as e:
        raise _refusal(type(head).__name__, str(e)) from None
    return adapter
