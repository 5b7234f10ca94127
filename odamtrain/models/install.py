"""Odam-NMS and Odam-Train switched on where a detector's config asks, however the detector
is built.

:func:`install_odam` gives the detector's dense head or RoI head the Odam subclass of its own
class (made once per class: :mod:`.odam_nms`'s and :mod:`.odam_train`'s mixins in front), with
the validated ``odam_loss`` settings. :func:`register_odam_builds` makes every detector that
mmengine's or mmdet's ``MODELS`` registry builds go through it (``MODELS.build(cfg.model)``,
mmdet's own Runner and ``init_detector``, odamtrain's runner), so that what the registry
builds is what trains and predicts. Detectors that do not ask are returned untouched.
"""
from __future__ import annotations

import functools

from mmdet.models.dense_heads import DETRHead
from mmdet.models.detectors import BaseDetector
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.registry import MODELS as MMENGINE_MODELS

from odamtrain.explain import head_adapter

from .odam_nms import (
    OdamNMSDenseMixin,
    OdamNMSRoIMixin,
    check_odam_nms_config,
    is_odam_nms,
)
from .odam_train import (
    ODAM_LOSS_WEIGHTS,
    OdamLossSettings,
    OdamTrainDenseMixin,
    OdamTrainRoIMixin,
)

__all__ = ['install_odam', 'register_odam_builds', 'asks_for_odam']

_MIXINS = dict(dense=(OdamTrainDenseMixin, OdamNMSDenseMixin),
               roi=(OdamTrainRoIMixin, OdamNMSRoIMixin))
_ODAM_CLASSES: dict = {}


def _odam_class(cls, kind: str):
    """The head class with the Odam mixins of ``kind`` in front (one per class, cached)."""
    mixins = _MIXINS[kind]
    if issubclass(cls, mixins):
        return cls
    if cls not in _ODAM_CLASSES:
        _ODAM_CLASSES[cls] = type(f'Odam{cls.__name__}', (*mixins, cls),
                                  {'__module__': __name__, '__doc__': cls.__doc__})
    return _ODAM_CLASSES[cls]


def _head(model):
    """The head Odam goes into: the RoI head of a two-stage detector, else the box head
    (None without either)."""
    roi_head = getattr(model, 'roi_head', None)
    return roi_head if roi_head is not None else getattr(model, 'bbox_head', None)


def asks_for_odam(model) -> list[str]:
    """What of Odam a detector's config asks for.

    Args:
        model: an mmdet detector.

    Returns:
        list[str]: of 'odam_loss' (``train_cfg.odam_loss``) and 'odam_nms' (its head's
        test-time NMS).
    """
    head = _head(model)
    train_cfg = getattr(model, 'train_cfg', None) or {}
    return ([k for k in ('odam_loss',) if train_cfg.get(k) is not None]
            + (['odam_nms'] if is_odam_nms(getattr(head, 'test_cfg', None)) else []))


def install_odam(model):
    """Switch Odam-NMS and Odam-Train on for ``model`` where its config asks (module
    docstring), after checking that its head is covered (an adapter reproduces it; for
    Odam-Train, one that knows its positives and, for dense heads, its conv towers).

    Args:
        model: an mmdet detector, as its registry builds it.

    Returns:
        The model (changed in place).

    Raises:
        UnsupportedDetectorError: a detector that asks for what no adapter gives it, naming
            the detector, its head and why.
        ValueError: a setting of ``odam_loss`` or of the Odam-NMS config that is invalid.
    """
    asked = asks_for_odam(model)
    head = _head(model)
    if not asked:
        return model
    where = f'{type(model).__name__} with {type(head).__name__}'
    if head is None or isinstance(head, DETRHead):
        why = ('DETR-like detectors make set predictions: there is no NMS for Odam-NMS to '
               'replace, and Odam-Train is not defined for them (the paper trains FCOS and '
               'Faster R-CNN); ODAM maps work' if head is not None
               else 'it has no box head or RoI head')
        raise ValueError(f'{where} asks for {" and ".join(asked)}, but {why}')
    kind = 'roi' if getattr(model, 'roi_head', None) is not None else 'dense'
    settings = OdamLossSettings.from_config(model.train_cfg.get('odam_loss') if 'odam_loss'
                                            in asked else None, ODAM_LOSS_WEIGHTS[kind])
    adapter = head_adapter(head)
    reason = adapter.nms_support() if 'odam_nms' in asked else None
    if reason is not None:
        raise ValueError(f'{where}: odam_nms: Odam-NMS cannot replace the NMS of '
                         f'{type(head).__name__}: {reason}')
    if 'odam_nms' in asked:
        try:
            check_odam_nms_config(head.test_cfg.nms, adapter)
        except ValueError as e:
            raise ValueError(f'{where}: test_cfg.nms: {e}') from None
    if settings is not None:
        reason = adapter.train_support() or (adapter.fast_support() if kind == 'dense'
                                             else None)
        if reason is not None:
            raise ValueError(f'{where}: odam_loss: Odam-Train needs the positives and the '
                             f'conv towers of {type(head).__name__}: {reason}')
    head.__class__ = _odam_class(type(head), kind)
    head.odam_loss = settings
    return model


def _with_odam(build_func):
    """A registry build function that hands every detector it builds to
    :func:`install_odam`."""
    @functools.wraps(build_func)
    def build(cfg, *args, **kwargs):
        built = build_func(cfg, *args, **kwargs)
        return install_odam(built) if isinstance(built, BaseDetector) else built
    build.odam = True
    return build


def register_odam_builds() -> None:
    """Make mmengine's and mmdet's ``MODELS`` registries install Odam on every detector they
    build (idempotent)."""
    for registry in (MMENGINE_MODELS, MMDET_MODELS):
        if not getattr(registry.build_func, 'odam', False):
            registry.build_func = _with_odam(registry.build_func)
