from .audit_report import format_audit_table, write_audit_report
from .explanation_grid import overlay_heatmap, render_explanations

__all__ = ['overlay_heatmap', 'render_explanations', 'format_audit_table', 'write_audit_report']
