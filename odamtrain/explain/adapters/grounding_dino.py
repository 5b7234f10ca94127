"""Adapter of mmdet's Grounding DINO (``GroundingDINO`` with ``GroundingDINOHead``; the
MM-Grounding-DINO configs build the same classes): the only code that knows how it reads a
text prompt.

Shapes: B images, Q queries, T = the head's ``max_text_len`` token slots, K_i the entities of
image i's prompt, n predictions.

The prompt comes with each image's data sample (``text``, and ``custom_entities=True`` for a
list of class names such as 'person . bicycle'), as mmdet's ``inference_detector`` and its
grounding datasets pass it. mmdet's own ``predict`` runs (tokenisation, BERT, the feature
enhancer's image-text fusion, the decoder's text cross-attention, the head's post-processing),
with A swapped in for its image features; the language model's features do not depend on the
image and are not part of A.

What A is (``features``): 'neck' (default: the levels of the ChannelMapper output that the
fusion layers and the deformable encoder read) or 'backbone' (the backbone stages the neck
projects). The encoder's memory is not offered: the fused text features also depend on the
image, and the decoder reads both.

Scores: the head's logits are per token (Q, T); mmdet's score of entity k is the mean over
its tokens of their sigmoids (``convert_grounding_to_cls_scores``), and 'logit' is the mean of
the same tokens' logits. A prompt without entities (a referring expression: mmdet's
``tokens_positive=-1``) has one class, scored by the best token.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from mmdet.models.dense_heads import GroundingDINOHead
from mmdet.models.dense_heads.atss_vlfusion_head import convert_grounding_to_cls_scores
from mmdet.models.detectors import GroundingDINO

from ..protocol import Same, instance_override
from .detr import DETRAdapter, DETRForward, _stride

__all__ = ['GroundingDINOAdapter', 'GroundingForward', 'require_prompts']


@dataclass
class GroundingForward(DETRForward):
    """One forward of Grounding DINO from A.

    Attributes:
        feats: L x (B, C, h, w) A (the leaves themselves).
        metas: the images' metainfo.
        leaves: the same tensors, requiring grad.
        strides: per level, in input pixels.
        cls: (B, Q, T) token logits of the last decoder layer (-inf past the prompt), with
            the graph to the leaves.
        boxes: (B, Q, 4) normalised (cx, cy, w, h) of the last decoder layer, likewise.
        dets: mmdet's detections of that forward (with ``label_names``).
        positive_maps: per image mmdet's ``token_positive_map``: entity k + 1 -> the indices
            of its tokens, or None for a referring expression.
    """
    positive_maps: list = None


def require_prompts(model, data_samples: list) -> None:
    """Refuse, by name, images without the text prompt a grounding detector reads.

    Args:
        model: an mmdet detector.
        data_samples: the batch's ``DetDataSample``.

    Raises:
        ValueError: for a detector with a language model and an image without ``text``.
    """
    if getattr(model, 'language_model', None) is None:
        return
    missing = [i for i, s in enumerate(data_samples) if 'text' not in s]
    if missing:
        raise ValueError(
            f'{type(model).__name__} reads a text prompt per image and image(s) {missing} '
            "have none: pass text='person . bicycle' (class names separated by ' . ', or a "
            "list of names), or use a test pipeline whose PackDetInputs meta_keys pack 'text' "
            "and 'custom_entities' (mmdet's grounding configs; a dataset with "
            'return_classes=True gives its class names)')


class GroundingDINOAdapter(DETRAdapter):
    """mmdet's ``GroundingDINO`` (and subclasses that keep what it reproduces)."""
    head_type = GroundingDINOHead
    features = ('auto', 'backbone', 'neck')
    reproduces = (Same('detector', (GroundingDINO.predict, GroundingDINO.forward_transformer,
                                    GroundingDINO.extract_feat)),
                  Same('head', (GroundingDINOHead.predict, GroundingDINOHead.predict_by_feat,
                                GroundingDINOHead._predict_by_feat_single)))

    def other_problems(self):
        problems = super().other_problems()
        if self.model is not None and self.model.test_cfg.get('chunked_size', -1) > 0:
            problems.append(
                f'{self.name} with test_cfg.chunked_size > 0 runs the transformer once per '
                'chunk of the prompt (not reproduced): set chunked_size=-1 (one pass for the '
                'whole prompt)')
        return problems

    # ------------------------------------------------------------------ forward
    @contextlib.contextmanager
    def _image_features_from(self, features: str, leaves: list):
        """Inside, the model's ``extract_feat`` returns A (leaves, appended to ``leaves``)
        computed without a graph up to there."""
        model = self.model

        def extract_feat(batch_inputs):
            with torch.no_grad():
                stages = model.backbone(batch_inputs)
                levels = model.neck(stages) if features == 'neck' else stages
            leaves.extend(x.detach().requires_grad_(True) for x in levels)
            return tuple(leaves) if features == 'neck' else model.neck(tuple(leaves))

        with instance_override(model, 'extract_feat', extract_feat):
            yield

    def forward(self, inputs, data_samples, features='auto') -> GroundingForward:
        """mmdet's ``predict`` (with each sample's ``text``) from A, grad enabled inside, with
        its detections (``label_names`` included)."""
        features = self.check_features(features)
        require_prompts(self.model, data_samples)
        store, leaves = {}, []
        with torch.enable_grad(), self._captured_outputs(store), \
                self._image_features_from(features, leaves):
            samples = self.model.predict(inputs, data_samples, rescale=True)
        strides = [_stride(inputs.shape[-2], lv.shape[-2]) for lv in leaves]
        return GroundingForward(
            leaves, [s.metainfo for s in samples], leaves, strides, store['cls'],
            store['boxes'], [s.pred_instances for s in samples],
            [s.token_positive_map for s in samples])

    # -------------------------------------------------------------- predictions
    def _class_scores(self, fwd, i: int, token_values: torch.Tensor) -> torch.Tensor:
        """(n, T) per-token values of image ``i`` -> (n, K_i) per entity, as mmdet's
        ``_predict_by_feat_single`` reads its scores (mean over the entity's tokens; the best
        token for a referring expression)."""
        positive_map = fwd.positive_maps[i]
        if positive_map is None:
            return token_values.max(-1, keepdim=True)[0]
        return convert_grounding_to_cls_scores(token_values[None], [positive_map])[0]

    def _selected(self, fwd, i: int, max_per_img: int) -> tuple:
        scores = self._class_scores(fwd, i, fwd.cls[i].detach().sigmoid())
        if fwd.positive_maps[i] is None:
            _, query = scores[:, 0].topk(max_per_img)
            return query, torch.zeros_like(query)
        _, index = scores.reshape(-1).topk(max_per_img)
        k = scores.shape[1]
        return index // k, index % k

    def _num_labels(self, fwd, i: int) -> int:
        positive_map = fwd.positive_maps[i]
        return 1 if positive_map is None else len(positive_map)

    # ---------------------------------------------------------------- attribute
    def attribute(self, target, fwd, preds):
        """'score' is mmdet's (mean of the entity's token sigmoids), 'logit' the mean of those
        tokens' logits; box sides as the DETR family."""
        if target not in ('score', 'logit'):
            return super().attribute(target, fwd, preds)
        values = fwd.cls.new_zeros(len(preds))
        for i in preds.img.unique().tolist():
            rows = (preds.img == i).nonzero()[:, 0]
            tokens = fwd.cls[i, preds.query[rows]]  # [n_i, T]
            per_class = self._class_scores(
                fwd, i, tokens.sigmoid() if target == 'score' else tokens)
            values = values.index_put((rows,), per_class.gather(1, preds.labels[rows, None])[:, 0])
        return values

