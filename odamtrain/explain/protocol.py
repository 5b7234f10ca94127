"""The adapter protocol: all that the explainers, Odam-NMS and Odam-Train know of a detector,
and the soundness gate that refuses a detector whose code is not the code an adapter
reproduces.

Shapes: B images, n predictions.

An adapter knows one family of mmdet detectors. It

* runs the detector from its inputs up to the head's outputs with A, the features the
  explanations differentiate, as leaves (:meth:`DetectorAdapter.forward`: a
  :class:`Forward` whose ``feats`` are A and ``metas`` the images' metainfo);
* gives mmdet's detections of that forward with their provenance (:meth:`predictions`),
  the candidates that reach NMS (:meth:`candidates`) and every prediction before score
  threshold and NMS (:meth:`every_prediction`), boxes x1y1x2y2 in original pixels;
* recomputes an attribute Y of chosen predictions with the graph to A (:meth:`attribute`)
  and makes their heat maps from its gradients, in batch (:meth:`heatmaps`);
* gives the positives of a training step and their maps (:meth:`train_positives`,
  :meth:`train_maps`: Odam-Train).

The gate is declarative: :attr:`DetectorAdapter.reproduces` lists, per part of the model
(:meth:`DetectorAdapter.parts`: the detector, its head, box heads, RoI extractors, RPN),
the functions the adapter reproduces or calls in mmdet's order; :meth:`DetectorAdapter.check`
compares them with the model's own before any work, so that a subclass that overrides one
step (a rescoring, a fused feature, another decoding) is refused by name instead of being
explained wrongly.
"""
from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass

import torch
from mmengine.logging import print_log
from mmengine.structures import InstanceData

__all__ = ['DetectorAdapter', 'Forward', 'Same', 'UnsupportedDetectorError', 'BOX_SIDES',
           'resolved', 'scales', 'instance_override']

BOX_SIDES = ('x1', 'y1', 'x2', 'y2')


class UnsupportedDetectorError(TypeError):
    """A detector that no adapter reproduces exactly; says which part differs and what is
    supported."""


def resolved(cls, name: str):
    """``getattr(cls, name)`` skipping classes that declare ``odam_mixin = True`` (the
    Odam-NMS / Odam-Train mixins, which run the head's own methods around theirs)."""
    for klass in cls.__mro__:
        if klass.__dict__.get('odam_mixin'):
            continue
        if name in klass.__dict__:
            value = klass.__dict__[name]  # (a static method: its function)
            return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
    raise AttributeError(name)


def _name(function) -> str:
    return getattr(function, '__qualname__', repr(function))


@dataclass(frozen=True)
class Same:
    """A part of the model (a key of :meth:`DetectorAdapter.parts`) whose class must resolve
    each of ``methods`` to exactly that function (looked up by its name)."""
    part: str
    methods: tuple

    def differences(self, obj) -> list[str]:
        """What differs on ``obj``: 'Class.method is X, not Y' per method."""
        out = []
        for expected in self.methods:
            expected = getattr(expected, '__func__', expected)  # (a class method)
            try:
                actual = resolved(type(obj), expected.__name__)
            except AttributeError:
                actual = None
            if actual is not expected:
                out.append(f'{type(obj).__name__}.{expected.__name__} is '
                           f'{_name(actual)}, not {_name(expected)}')
        return out


@dataclass
class Forward:
    """One forward of a detector, reused by every explanation of its predictions. Each
    family's record adds what its post-processing needs.

    Attributes:
        feats: the tensors A (leaves of the graph where Y is differentiated).
        metas: the images' metainfo.
    """
    feats: list
    metas: list


class DetectorAdapter(abc.ABC):
    """One family of mmdet detectors (module docstring).

    Class attributes:

    - ``head_type``: the head class whose subclasses it covers (when they pass the gate).
    - ``box_head_type``: for a RoI head, the box head class it is for (None: any; the gate
      checks the box head's methods).
    - ``reproduces``: the gate's :class:`Same` entries.
    - ``features``: the choices of A it offers ('auto' first).

    Args:
        head: the detector's head (dense head or RoI head) the family knows.
        model: the detector (None: a bare head, as inside Odam-NMS and Odam-Train).
    """
    head_type: type = object
    box_head_type: type | None = None
    reproduces: tuple = ()
    features: tuple = ('auto',)

    def __init__(self, head, model=None):
        self.head, self.model = head, model

    # ------------------------------------------------------------------ the gate
    def parts(self) -> dict:
        """The parts of the model the gate checks.

        Returns:
            dict: part name -> the model's object(s) of that part.
        """
        parts = {'head': [self.head]}
        if self.model is not None:
            parts['detector'] = [self.model]
        return parts

    def check(self) -> None:
        """Raise :class:`UnsupportedDetectorError` naming each part whose methods differ from
        :attr:`reproduces` (parts absent, e.g. the detector of a bare head, are skipped)."""
        parts = self.parts()
        problems = [d for same in self.reproduces for obj in parts.get(same.part, [])
                    for d in same.differences(obj)]
        problems += self.other_problems()
        if problems:
            raise UnsupportedDetectorError('; '.join(problems))

    def other_problems(self) -> list[str]:
        """What else the family needs of the model (beyond methods).

        Returns:
            list[str]: the problems, in words (empty: none).
        """
        return []

    @property
    def name(self) -> str:
        """The detector (or head) class the messages name."""
        return type(self.model if self.model is not None else self.head).__name__

    def check_features(self, features: str) -> str:
        """Resolve a choice of A.

        Args:
            features: one of :attr:`features` ('auto': the family's default).

        Returns:
            str: the resolved choice.

        Raises:
            ValueError: not one of :attr:`features`.
        """
        if features not in self.features:
            raise ValueError(f'{self.name}: features must be one of {self.features}, got '
                             f'{features!r}')
        return features

    def mode_fallback(self) -> str | None:
        """Why the 'fast' / 'windows' gradient modes do not apply to this detector (exact
        gradients are used then).

        Returns:
            str or None: the reason, or None.
        """
        return None

    def target_support(self, target: str) -> str | None:
        """Whether an attribute is reproduced for this detector (checked before any work).

        Args:
            target: of :data:`~odamtrain.explain.TARGETS`.

        Returns:
            str or None: None, or why not.
        """
        return None

    def check_target(self, target: str) -> None:
        """Refuse an attribute this detector does not reproduce.

        Args:
            target: of :data:`~odamtrain.explain.TARGETS`.

        Raises:
            UnsupportedDetectorError: with :meth:`target_support`'s reason.
        """
        reason = self.target_support(target)
        if reason is not None:
            raise UnsupportedDetectorError(f'{self.name}: target {target!r}: {reason}')

    def train_support(self) -> str | None:
        """Whether Odam-Train knows this head's positives and maps.

        Returns:
            str or None: None, or why not.
        """
        return None

    def nms_support(self) -> str | None:
        """Whether Odam-NMS can take the place of the detector's NMS.

        Returns:
            str or None: None, or why not.
        """
        return None

    def explain_mode(self, mode: str) -> None:
        """One log line when ``mode`` does not apply (:meth:`mode_fallback`).

        Args:
            mode: of :data:`~odamtrain.explain.MODES`.
        """
        reason = self.mode_fallback()
        if mode != 'exact' and reason is not None:
            print_log(f'ODAM: {mode} mode does not apply ({reason}); using exact mode',
                      logger='current')

    # ------------------------------------------------------------ the protocol
    @property
    @abc.abstractmethod
    def test_cfg(self):
        """The test config whose ``nms`` (and ``score_thr``, ``max_per_img``) make the
        detections."""

    @abc.abstractmethod
    def forward(self, inputs: torch.Tensor, data_samples: list,
                features: str = 'auto') -> Forward:
        """The detector from its preprocessed inputs up to the head's outputs, A as leaves; no
        graph outside what Y needs.

        Args:
            inputs: (B, 3, H_in, W_in) the data preprocessor's output.
            data_samples: B ``DetDataSample`` with the images' metainfo.
            features: the choice of A (:meth:`check_features`).

        Returns:
            Forward: the family's record of the forward.
        """

    @abc.abstractmethod
    def predictions(self, fwd: Forward, cfg=None) -> list:
        """mmdet's detections of the forward.

        Args:
            fwd: the adapter's forward of the batch (:meth:`forward`).
            cfg: replaces :attr:`test_cfg` (e.g. another NMS).

        Returns:
            list: per image an InstanceData: ``bboxes`` (N, 4) x1y1x2y2 original pixels,
            ``scores``, ``labels``, ``img`` and the family's provenance.
        """

    @abc.abstractmethod
    def candidates(self, fwd: Forward) -> list:
        """The predictions that reach NMS (what Odam-NMS compares).

        Args:
            fwd: the adapter's forward of the batch (:meth:`forward`).

        Returns:
            list: per image an InstanceData as :meth:`predictions`'.
        """

    @abc.abstractmethod
    def every_prediction(self, fwd: Forward) -> list:
        """Every prediction before score threshold and NMS (to find the prediction that explains a
        target best).

        Args:
            fwd: the adapter's forward of the batch (:meth:`forward`).

        Returns:
            list: per image an InstanceData as :meth:`predictions`'.
        """

    @abc.abstractmethod
    def attribute(self, target: str, fwd: Forward, preds: InstanceData) -> torch.Tensor:
        """The explained attribute Y of predictions, with the graph to A.

        Args:
            target: 'score' (mmdet's score of that family), 'logit' (the class logit) or a box
                side 'x1' | 'y1' | 'x2' | 'y2' (original pixels, not clipped).
            fwd: the adapter's forward of the batch (:meth:`forward`).
            preds: n predictions of the forward (with their provenance).

        Returns:
            Tensor: (n,).
        """

    @abc.abstractmethod
    def leaf_attribute(self, target: str, fwd: Forward, preds: InstanceData) -> tuple:
        """Y with the graph to A as leaf tensors (made with grad enabled): what one backward per
        prediction differentiates (the oracle of the batched maps).

        Args:
            target: as :meth:`attribute`'s.
            fwd: the adapter's forward of the batch (:meth:`forward`).
            preds: n predictions of the forward.

        Returns:
            tuple: ``(Y, leaves, rows)``: Y (n,); the leaves; the row of the leaves' first
            dimension each prediction reads (its image, or its RoI): (n,), or one (n,) per leaf
            where they differ (MS R-CNN's per-prediction mask reads).
        """

    @abc.abstractmethod
    def heatmaps(self, fwd: Forward, dets: list, settings) -> None:
        """Set ``heatmaps`` (N, H, W) >= 0 at ``settings.map_size`` on each image's predictions,
        by ``settings.method`` / ``target`` / ``smooth``, in batch.

        Args:
            fwd: the adapter's forward of the batch (:meth:`forward`).
            dets: per image the predictions to explain (changed in place).
            settings: an :class:`~odamtrain.explain.ExplanationSettings`.
        """

    def train_positives(self, step) -> InstanceData:
        """The positives of a training step as the head's own assignment made them.

        Args:
            step: the adapter's record of the training step.

        Returns:
            InstanceData: ``img``, ``labels``, ``gt_index``, ``ious`` and the family's
            provenance.
        """
        raise UnsupportedDetectorError(f'{self.name}: Odam-Train does not know its positives')

    def train_maps(self, step, positives: InstanceData, grid_hw, map_stride: int,
                   second_order: bool) -> torch.Tensor:
        """ODAM maps of the positives on a common grid, Y the assigned class's logit, with the
        graph Odam-Train's loss needs.

        Args:
            step: the adapter's record of the training step.
            positives: N of :meth:`train_positives`' rows.
            grid_hw: (h, w) of the grid.
            map_stride: its stride in input pixels.
            second_order: keep the graph of dY/dA too (the loss then trains the head).

        Returns:
            Tensor: ``(N, *grid_hw)``.
        """
        raise UnsupportedDetectorError(f'{self.name}: Odam-Train has no maps for it')


def scales(metas: list, like: torch.Tensor) -> torch.Tensor:
    """(B, 2) input / original (w, h) of each image (1 where the pipeline does not resize:
    no ``scale_factor``)."""
    return torch.tensor([m.get('scale_factor', (1.0, 1.0))[:2] for m in metas],
                        dtype=like.dtype, device=like.device)


@contextlib.contextmanager
def instance_override(obj, name: str, function):
    """Context manager: inside, ``obj.name`` is ``function`` (an instance attribute over
    the class's method); on exit, error or not, the class's method again.

    Args:
        obj: the module whose method is overridden.
        name: the method's name.
        function: what ``obj.name`` is inside.

    Yields:
        None.
    """
    setattr(obj, name, function)
    try:
        yield
    finally:
        delattr(obj, name)
