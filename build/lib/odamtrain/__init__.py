"""odamtrain: ODAM explanations, Odam-Train and Odam-NMS for MMDetection 3.x.

Importing the package (``custom_imports = dict(imports=['odamtrain'])``) registers its
datasets, metrics, hooks and runner in mmdet/mmengine registries, makes every detector the
``MODELS`` registries build get Odam-NMS / Odam-Train where its config asks, makes
mmengine's local file writes atomic and its local checkpoint loading bounded and
weights-only.
"""
from . import apis, datasets, engine, evaluation, explain, models  # noqa: F401  (registers modules)
from .engine.checkpoint import register_safe_local_loader
from .models import register_odam_builds
from .utils.fileio import register_atomic_local_writes
from .version import __version__

register_atomic_local_writes()
register_safe_local_loader()
register_odam_builds()

__all__ = ['__version__']
