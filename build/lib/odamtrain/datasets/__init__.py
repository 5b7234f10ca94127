from .crowdhuman import StrictCrowdHumanDataset
from .odgt import OdgtError, read_odgt
from .synthetic import (
    DENSITIES,
    SceneSpec,
    crowd_statistics,
    make_synthetic_crowdhuman,
    render_scene,
)

__all__ = ['StrictCrowdHumanDataset', 'OdgtError', 'read_odgt', 'DENSITIES', 'SceneSpec',
           'crowd_statistics', 'make_synthetic_crowdhuman', 'render_scene']
