"""Pictures of explanations: the image with the explained boxes, then one panel per box
with its heat map over the image."""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ['overlay_heatmap', 'render_explanations', 'combine_heatmaps', 'render_combined',
           'box_colour']

_COLOURS = [(48, 48, 255), (255, 160, 0), (0, 200, 0), (255, 0, 200), (0, 220, 255),
            (200, 120, 255), (255, 255, 0), (120, 60, 255)]  # BGR


def box_colour(i: int) -> tuple:
    """The colour of explained box i in every picture.

    Args:
        i: the box's index.

    Returns:
        tuple: (B, G, R).
    """
    return _COLOURS[i % len(_COLOURS)]


def combine_heatmaps(img: np.ndarray, heatmaps: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """All detections' maps in one image (the ODAM paper's Fig. 3, right): each map min-max
    scaled to [0, 1]; at each pixel the strongest map m_i wins and the pixel becomes
    ``img * (1 - alpha * m_i) + colour_i * alpha * m_i`` (:func:`box_colour`).

    Args:
        img: (H, W, 3) BGR uint8.
        heatmaps: (N, H, W) any range.
        alpha: the maps' weight.

    Returns:
        np.ndarray: (H, W, 3) BGR uint8 (the image itself when N = 0).
    """
    if len(heatmaps) == 0:
        return img.copy()
    h = heatmaps.astype(np.float32).reshape(len(heatmaps), -1)
    lo, span = h.min(1, keepdims=True), np.ptp(h, 1, keepdims=True)
    h = np.where(span > 0, (h - lo) / np.where(span > 0, span, 1), 0).reshape(heatmaps.shape)
    winner, strength = h.argmax(0), h.max(0)
    colours = np.array([box_colour(i) for i in range(len(heatmaps))], np.float32)
    weight = (alpha * strength)[..., None]
    return (img * (1 - weight) + colours[winner] * weight).astype(np.uint8)


def render_combined(img: np.ndarray, bboxes: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """:func:`combine_heatmaps` with each box drawn (and numbered) in its map's colour.

    Args:
        img: (H, W, 3) BGR uint8.
        bboxes: (N, 4) x1y1x2y2 pixels.
        heatmaps: (N, H, W).

    Returns:
        np.ndarray: (H, W, 3) BGR uint8.
    """
    out = combine_heatmaps(img, heatmaps)
    for i, box in enumerate(bboxes):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), box_colour(i), 1)
        cv2.putText(out, str(i), (x1 + 2, max(y1 + 12, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    box_colour(i), 1, cv2.LINE_AA)
    return out


def overlay_heatmap(img: np.ndarray, heatmap: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a map as a JET colour map over an image.

    Args:
        img: (H, W, 3) BGR uint8.
        heatmap: (H, W) any range (min-max scaled here).
        alpha: the map's weight.

    Returns:
        np.ndarray: (H, W, 3) BGR uint8.
    """
    h = heatmap.astype(np.float32)
    span = h.max() - h.min()
    h = (h - h.min()) / span if span > 0 else np.zeros_like(h)
    colour = cv2.applyColorMap((h * 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (alpha * np.sqrt(h))[..., None]  # cold regions stay close to the image
    return (img * (1 - weight) + colour * weight).astype(np.uint8)


def _label(panel, text, colour):
    cv2.rectangle(panel, (0, 0), (panel.shape[1], 18), (0, 0, 0), -1)
    cv2.putText(panel, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)


def render_explanations(img: np.ndarray, bboxes: np.ndarray, scores: np.ndarray,
                        heatmaps: np.ndarray, titles: list[str] | None = None, cols: int = 4,
                        panel_width: int = 320) -> np.ndarray:
    """A grid: panel 0 is the image with every explained box (numbered); panel i + 1 is the
    heat map of box i over the image, with that box drawn.

    Args:
        img: (H, W, 3) BGR uint8.
        bboxes: (N, 4) x1y1x2y2 pixels.
        scores: (N,).
        heatmaps: (N, H, W).
        titles: per-box captions (default '#i score').
        cols: panels per row.
        panel_width: pixels per panel.

    Returns:
        np.ndarray: (rows * h, cols * panel_width, 3) BGR uint8.
    """
    n = len(bboxes)
    s = panel_width / img.shape[1]
    ph = int(round(img.shape[0] * s))

    def panel(base, boxes_idx):
        p = cv2.resize(base, (panel_width, ph), interpolation=cv2.INTER_AREA)
        for i in boxes_idx:
            x1, y1, x2, y2 = (int(round(v * s)) for v in bboxes[i])
            c = box_colour(i)
            cv2.rectangle(p, (x1, y1), (x2, y2), c, 2 if len(boxes_idx) == 1 else 1)
            if len(boxes_idx) > 1:
                cv2.putText(p, str(i), (x1 + 2, max(y1 + 12, 30)), cv2.FONT_HERSHEY_SIMPLEX,
                            0.4, c, 1, cv2.LINE_AA)
        return p

    panels = [panel(img, range(n))]
    _label(panels[0], f'{n} explained detections', (255, 255, 255))
    for i in range(n):
        p = panel(overlay_heatmap(img, heatmaps[i]), [i])
        _label(p, titles[i] if titles else f'#{i}  score {scores[i]:.2f}',
               box_colour(i))
        panels.append(p)
    cols = max(1, min(cols, len(panels)))
    while len(panels) % cols:
        panels.append(np.zeros_like(panels[0]))
    rows = [np.hstack(panels[r:r + cols]) for r in range(0, len(panels), cols)]
    return np.vstack(rows)
