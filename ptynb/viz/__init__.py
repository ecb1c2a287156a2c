"""HoloViews views of ptynb datasets and workflow results (bokeh backend).

Shared views live in modules, one module per workflow holds that workflow's views:

- :mod:`.images`: real images with physical axes, complex images (amplitude/phase, HSV),
  probes and objects;
- :mod:`.volumes`: a volume (z, y, x) as three orthogonal slices with sliders;
- :mod:`.spectra`: radially averaged power spectra, FRC/FSC with the half-bit threshold and
  the resolution marked;
- :mod:`.convergence`: cost curves, overlaid per beam/angle;
- :mod:`.measurement`: scan positions and the scan explorer;
- :mod:`.tree`: :func:`show` and :func:`tree_views` (default views of any result tree);
- :mod:`.stereo`: the stereo workflow's views (``views(tree, settings)``), used by its notebook
  and its app.

Complex arrays are never handed to a plot. Device arrays are copied to the host first. This
package imports holoviews (never panel); ``import ptynb`` does not import it.
"""
from __future__ import annotations

from ._core import (AMPLITUDE_CMAP, FRAME_WIDTH, MAX_DISPLAY_PIXELS, PATTERN_CMAP, PHASE_CMAP,
                    complex_to_rgb, markdown_table, phase_colors)
from .convergence import cost_curve, cost_curves
from .images import amplitude_phase, complex_image, image, object_view, probe_view
from .measurement import counts_map, scan_explorer, scan_points
from .spectra import frc_view, power_spectrum_view, radial_power_spectrum
from .tree import array_view, attrs_table, show, tree_views
from .volumes import orthoslices

__all__ = [
    "complex_to_rgb",
    "phase_colors",
    "complex_image",
    "amplitude_phase",
    "image",
    "scan_points",
    "scan_explorer",
    "counts_map",
    "probe_view",
    "object_view",
    "cost_curve",
    "cost_curves",
    "orthoslices",
    "radial_power_spectrum",
    "power_spectrum_view",
    "frc_view",
    "array_view",
    "attrs_table",
    "markdown_table",
    "tree_views",
    "show",
    "PHASE_CMAP",
    "AMPLITUDE_CMAP",
    "PATTERN_CMAP",
    "FRAME_WIDTH",
    "MAX_DISPLAY_PIXELS",
]
