from .functional import crowd_mask, set_recalls
from .metrics import CrowdHumanDetMetric

__all__ = ['CrowdHumanDetMetric', 'crowd_mask', 'set_recalls']
