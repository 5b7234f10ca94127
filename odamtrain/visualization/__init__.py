from .explanation_grid import overlay_heatmap, render_explanations

__all__ = ['overlay_heatmap', 'render_explanations']
