from .crowdhuman_metric import CrowdHumanDetMetric

__all__ = ['CrowdHumanDetMetric']
