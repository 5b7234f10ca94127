from .audit_report import format_audit_table, write_audit_report
from .explanation_grid import (
    box_colour,
    combine_heatmaps,
    overlay_heatmap,
    render_combined,
    render_explanations,
)

__all__ = ['overlay_heatmap', 'render_explanations', 'combine_heatmaps', 'render_combined',
           'box_colour', 'format_audit_table', 'write_audit_report']
