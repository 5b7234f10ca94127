"""odamtrain: ODAM explanations, Odam-Train and Odam-NMS for MMDetection 3.x.

Importing the package (``custom_imports = dict(imports=['odamtrain'])``) registers its
datasets, metrics, hooks and runner in mmdet/mmengine registries, makes mmengine's local
file writes atomic and its local checkpoint loading weights-only with a narrow allow-list.
"""
from . import apis, datasets, engine, evaluation, explain, models, ops  # noqa: F401  (registers modules)
from .engine.checkpoint import register_safe_local_loader
from .utils.fileio import register_atomic_local_writes
from .version import __version__

register_atomic_local_writes()
register_safe_local_loader()

__all__ = ['__version__']
