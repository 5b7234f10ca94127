"""Loading a detector the way odamtrain's runner builds one."""
from __future__ import annotations

from mmdet.apis import init_detector as mmdet_init_detector

from odamtrain.models import install_odam

__all__ = ['init_detector']


def init_detector(config, checkpoint: str | None = None, device: str = 'cpu',
                  cfg_options: dict | None = None, **kwargs):
    """mmdet's ``init_detector`` (its checkpoint loaded weights-only once odamtrain is
    imported), with Odam-NMS and Odam-Train switched on where the config asks
    (:func:`odamtrain.models.install_odam`), so that ``model.predict`` of an
    ``odam_nms`` config runs Odam-NMS."""
    return install_odam(mmdet_init_detector(config, checkpoint, device=device,
                                            cfg_options=cfg_options, **kwargs))
