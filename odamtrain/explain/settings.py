"""What to explain and how: one frozen object, validated once where the user hands it in."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = ['ExplanationSettings', 'DriseSettings', 'DhsicSettings', 'VpsSettings', 'METHODS',
           'GRADIENT_METHODS', 'TARGETS', 'MODES', 'FEATURES', 'DRISE_ESTIMATORS',
           'VPS_SEGMENTATIONS', 'VPS_SEARCHES', 'EVIDENCE_SOURCES']

METHODS = ('odam', 'gradcam', 'gradcampp', 'ssgradcampp', 'drise', 'dhsic', 'vps')
GRADIENT_METHODS = ('odam', 'gradcam', 'gradcampp', 'ssgradcampp')
TARGETS = ('score', 'logit', 'x1', 'y1', 'x2', 'y2')
MODES = ('fast', 'windows', 'exact')
FEATURES = ('auto', 'fpn', 'roi', 'backbone', 'neck', 'memory', 'towers')
DRISE_ESTIMATORS = ('contrast', 'coverage', 'mean')
VPS_SEGMENTATIONS = ('slico', 'grid')
VPS_SEARCHES = ('greedy', 'windowed')
EVIDENCE_SOURCES = ('detections', 'candidates')


def _check(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f'{name} must be one of {tuple(allowed)}, got {value!r}')


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if type(value) is not int or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


@dataclass(frozen=True)
class DriseSettings:
    """D-RISE (Petsiuk et al., CVPR'21), see :mod:`odamtrain.explain.drise`.

    Args:
        num_masks: random masks per image.
        grid: masks are ``grid`` x ``grid`` cells, upsampled with a random shift.
        keep_prob: probability that a cell is kept.
        batch_size: masked images per forward.
        seed: of the masks (same seed, same masks).
        estimator: 'contrast' (mean weight of the masks that keep a pixel minus that of the
            masks that remove it: the most stable at few masks), 'coverage' (the masks that
            keep it, as xaitk-saliency) or 'mean' (the paper's sum / N).
        evidence: what a masked image's weight is read from: 'detections' (mmdet's final
            detections) or 'candidates' (every prediction before score threshold and NMS,
            with mmdet's score of that head; through the detector's adapter).

    Raises:
        ValueError: a field out of its range or choices.
    """
    num_masks: int = 5000
    grid: int = 16
    keep_prob: float = 0.5
    batch_size: int = 32
    seed: int = 0
    estimator: str = 'contrast'
    evidence: str = 'detections'

    def __post_init__(self):
        _check('drise.estimator', self.estimator, DRISE_ESTIMATORS)
        _check('drise.evidence', self.evidence, EVIDENCE_SOURCES)
        _positive_int('drise.num_masks', self.num_masks)
        _positive_int('drise.grid', self.grid)
        _positive_int('drise.batch_size', self.batch_size)
        if not 0 < self.keep_prob < 1:
            raise ValueError(f'drise.keep_prob must be in (0, 1), got {self.keep_prob!r}')
        if type(self.seed) is not int:
            raise ValueError(f'drise.seed must be an integer, got {self.seed!r}')


@dataclass(frozen=True)
class DhsicSettings:
    """D-HSIC, the HSIC attribution method (Novello et al., NeurIPS'22) for detections, see
    :mod:`odamtrain.explain.dhsic`.

    Args:
        num_designs: masked images per image (binary Sobol designs).
        grid: designs are ``grid`` x ``grid`` cells (<= 100).
        batch_size: masked images per forward.
        seed: of the designs' scrambling (same seed, same designs).
        evidence: as :class:`DriseSettings`'.

    Raises:
        ValueError: a field out of its range or choices.
    """
    num_designs: int = 500
    grid: int = 8
    batch_size: int = 32
    seed: int = 0
    evidence: str = 'detections'

    def __post_init__(self):
        _positive_int('dhsic.num_designs', self.num_designs, minimum=2)
        _positive_int('dhsic.grid', self.grid)
        if self.grid > 100:
            raise ValueError(f'dhsic.grid must be <= 100, got {self.grid!r}')
        _positive_int('dhsic.batch_size', self.batch_size)
        _positive_int('dhsic.seed', self.seed, minimum=0)
        _check('dhsic.evidence', self.evidence, EVIDENCE_SOURCES)


@dataclass(frozen=True)
class VpsSettings:
    """VPS (Chen et al., CVPR'25), see :mod:`odamtrain.explain.vps`.

    Args:
        regions: about this many sub-regions per image.
        segmentation: 'slico' (the authors' SLICO superpixels, scikit-image) or 'grid'.
        search: 'greedy' (the paper: every remaining region at every step) or 'windowed'.
        head: windowed: greedy steps first.
        window: windowed: the most promising regions re-evaluated per step (0: the rest
            ordered by their last gains).
        box_slots: windowed: places of the window given round-robin to the regions
            overlapping the target box (docs/benchmarks.md: 3).
        max_steps: at most this many steps (None: all).
        batch_size: images per forward.
        evidence: as :class:`DriseSettings`' (the authors' mmdet wrappers score every
            prior: 'candidates').

    Raises:
        ValueError: a field out of its range or choices.
    """
    regions: int = 64
    segmentation: str = 'slico'
    search: str = 'windowed'
    head: int = 1
    window: int = 6
    box_slots: int = 3
    max_steps: int | None = None
    batch_size: int = 32
    evidence: str = 'detections'

    def __post_init__(self):
        _positive_int('vps.regions', self.regions, minimum=2)
        _check('vps.segmentation', self.segmentation, VPS_SEGMENTATIONS)
        _check('vps.search', self.search, VPS_SEARCHES)
        _check('vps.evidence', self.evidence, EVIDENCE_SOURCES)
        _positive_int('vps.head', self.head)
        _positive_int('vps.window', self.window, minimum=0)
        _positive_int('vps.box_slots', self.box_slots, minimum=0)
        _positive_int('vps.batch_size', self.batch_size)
        if self.max_steps is not None:
            _positive_int('vps.max_steps', self.max_steps)


@dataclass(frozen=True)
class ExplanationSettings:
    """How the heat maps of a detector's predictions are made.

    Args:
        method: 'odam' (default), 'gradcam' / 'gradcampp' / 'ssgradcampp' (instance
            Grad-CAM, Grad-CAM++ and Spatial Sensitive Grad-CAM++ baselines from the same
            gradients), 'drise' / 'dhsic' / 'vps' (black box; settings in
            ``drise`` / ``dhsic`` / ``vps``).
        target: the explained attribute Y: 'score' (mmdet's score for that head), 'logit'
            (the class logit), or a box side 'x1' | 'y1' | 'x2' | 'y2' (original pixels).
        smooth: ODAM's Phi: 'gaussian' (paper; width follows the box) or None (the authors'
            public code).
        normalize: per map 'minmax' (pictures), 'l2' (correlations) or None.
        mode: dense heads: 'fast' (windows, normalisation statistics held constant; small
            levels exact), 'windows' (windows on every level) or 'exact'.
        map_size: 'image' (original image size) or an int, the maps' short edge.
        features: what A is: 'auto' (the FPN level for one-stage heads, the RoI features
            for two-stage, the backbone's last stage for DETR / Conditional DETR / DAB-DETR
            and the neck's levels for Deformable DETR / DINO), 'roi' or 'fpn' (two-stage:
            the RoI's FPN level), 'backbone', 'neck' or 'memory' (DETR-like: the encoder's
            output), 'towers' (dense heads with conv towers: the towers' outputs, which
            the head's final layers read; exact and cheap, no backward through the towers).
        drise: :class:`DriseSettings` (or its fields as a dict) of ``method='drise'``.
        dhsic: :class:`DhsicSettings` (or its fields as a dict) of ``method='dhsic'``.
        vps: :class:`VpsSettings` (or its fields as a dict) of ``method='vps'``.

    Raises:
        ValueError: a field that is not one of its choices, naming it and the choices.
    """
    method: str = 'odam'
    target: str = 'score'
    smooth: str | None = 'gaussian'
    normalize: str | None = 'minmax'
    mode: str = 'fast'
    map_size: str | int = 'image'
    features: str = 'auto'
    drise: DriseSettings = field(default_factory=DriseSettings)
    dhsic: DhsicSettings = field(default_factory=DhsicSettings)
    vps: VpsSettings = field(default_factory=VpsSettings)

    def __post_init__(self):
        _check('method', self.method, METHODS)
        _check('target', self.target, TARGETS)
        if self.smooth == 'none':
            object.__setattr__(self, 'smooth', None)
        _check('smooth', self.smooth, ('gaussian', None))
        if self.normalize == 'none':
            object.__setattr__(self, 'normalize', None)
        _check('normalize', self.normalize, ('minmax', 'l2', None))
        _check('mode', self.mode, MODES)
        if self.map_size != 'image':
            _positive_int('map_size', self.map_size)
        _check('features', self.features, FEATURES)
        for name, cls in (('drise', DriseSettings), ('dhsic', DhsicSettings),
                          ('vps', VpsSettings)):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, cls())
            elif isinstance(value, dict):
                unknown = set(value) - {f.name for f in fields(cls)}
                if unknown:
                    raise ValueError(f'{name}: unknown settings {sorted(unknown)}; expected '
                                     f'{[f.name for f in fields(cls)]}')
                object.__setattr__(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise ValueError(f'{name} must be a {cls.__name__} or a dict, got {value!r}')

    @classmethod
    def build(cls, settings=None, **overrides) -> ExplanationSettings:
        """``settings`` (an ExplanationSettings, a dict or None) with keyword overrides."""
        if settings is None:
            settings = {}
        if isinstance(settings, str):
            raise TypeError(f'settings must be an ExplanationSettings or a dict, got '
                            f'{settings!r} (pass the method as method={settings!r})')
        if isinstance(settings, ExplanationSettings):
            settings = {f.name: getattr(settings, f.name) for f in fields(cls)}
        unknown = (set(settings) | set(overrides)) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f'unknown explanation settings {sorted(unknown)}; expected '
                             f'{[f.name for f in fields(cls)]}')
        return cls(**{**settings, **overrides})
