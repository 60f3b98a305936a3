"""One style for every saved figure: serif, >= 12 pt, colorblind-safe palette, 300 DPI, PNG + PDF,
and a JSON sidecar with the provenance (run id, git commit, notebook, parameters) of the data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt

from ctlib.atomic import atomic_path, write_json

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
DPI = 300
FORMATS = ("png", "pdf")

RC_PARAMS: dict[str, Any] = {
    "font.family": "serif",
    "font.serif": ["DejaVu Serif", "Times New Roman", "Times"],
    "font.size": 12,
    "axes.titlesize": 12,
    "axes.labelsize": 12,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
    "legend.fontsize": 12,
    "figure.titlesize": 13,
    "axes.prop_cycle": mpl.cycler(color=OKABE_ITO),
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "image.interpolation": "nearest",
    "pdf.fonttype": 42,  # embed TrueType so journals' PDF checks pass
}


def apply_style() -> None:
    """Set the suite's matplotlib style globally (call once per notebook)."""
    mpl.rcParams.update(RC_PARAMS)


def save_figure(fig: plt.Figure, path_stem: str | os.PathLike, provenance: dict[str, Any]) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` (300 DPI) plus ``<stem>.json`` with ``provenance``.

    ``provenance`` should name at least the run id and git commit of the data behind the figure;
    each file is written atomically.
    """
    stem = Path(path_stem)
    written = []
    for fmt in FORMATS:
        target = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
        written.append(target)
    sidecar = stem.with_name(f"{stem.name}.json")
    write_json(sidecar, {"figure": [p.name for p in written], **provenance})
    written.append(sidecar)
    return written
