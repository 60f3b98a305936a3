"""Figures and viewers: one style for saved figures (``style``), static panels (``panels``)."""
