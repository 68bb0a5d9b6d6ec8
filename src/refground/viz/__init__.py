"""Pictures of what a method did: one prediction drawn on its image, contact sheets of an
evaluation's worst (or best) cases, comparison reports of several runs, training curves.

Drawing boxes needs only Pillow; charts (``report``, ``curves``) need matplotlib, from the
``viz`` extra, imported only when a chart is drawn so the rest of refground never pays for it.
"""

from refground.viz.draw import draw_gt_vs_pred, draw_prediction

__all__ = ["draw_gt_vs_pred", "draw_prediction"]
