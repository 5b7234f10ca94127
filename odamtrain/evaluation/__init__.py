from .metrics import CrowdHumanDetMetric

__all__ = ['CrowdHumanDetMetric']
