"""Pure functions on detection structures (boxes, labels, scores)."""
from .box_matching import (
    EVIDENCES,
    best_candidates,
    detection_evidence,
    failure_sets,
    match_detections,
    target_predictions,
)

__all__ = ['match_detections', 'best_candidates', 'target_predictions', 'failure_sets',
           'EVIDENCES', 'detection_evidence']
