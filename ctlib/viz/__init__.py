"""Figures and viewers.

- ``style``: one style for saved figures (serif, >= 12 pt, colorblind-safe, PNG + PDF, provenance sidecar).
- ``publish``: a run's saved figures copied into the repository's ``figures/`` (only runs asked to publish).
- ``panels``: static panels of CT volumes under named HU windows.
- ``viewer``: the orthogonal slice viewer for Jupyter (``Viewer``), its inputs and static fallback.
- ``viewer_widgets``: the viewer's ipywidgets (sliders, presets, overlay controls, legends, CSS classes).
- ``view_state``: the viewer's state and geometry (display volumes, pane layouts, clicks, probes).
- ``render``: pure-numpy pane rendering (windowing, label and dose overlays, isodose lines, crosshair).
- ``labels``: label tables, deterministic colours and legends of the labels in view.
"""
