from odamtrain.structures import (
    EVIDENCES,
    best_candidates,
    detection_evidence,
    failure_sets,
    match_detections,
    target_predictions,
)

from .crowd_recall import crowd_mask, set_recalls
from .declaration import DIRECTIONS, metric
from .faithfulness import (
    curve_auc,
    deletion_auc,
    deletion_insertion,
    explanation_success,
    highest_score,
    insertion_auc,
    perturbed_images,
)
from .localisation import (
    box_mask,
    compactness,
    energy_pointing_game,
    object_discrimination_index,
    pointing_game,
)

__all__ = ['crowd_mask', 'set_recalls', 'box_mask', 'pointing_game', 'energy_pointing_game',
           'compactness', 'object_discrimination_index', 'match_detections',
           'best_candidates', 'target_predictions', 'failure_sets',
           'EVIDENCES', 'detection_evidence', 'perturbed_images', 'curve_auc',
           'deletion_insertion', 'deletion_auc', 'insertion_auc', 'highest_score',
           'explanation_success', 'DIRECTIONS', 'metric']
