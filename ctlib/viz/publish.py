"""Publishing figures: copy the figure files a run saved into the repository's ``figures/`` folder.

A notebook saves its figures into its own run folder (``<run>/figures``); only a run asked to publish
(``publish_figures=True``, set by the parameter sets of the real runs) copies them into the committed
``figures/``, so default and test runs (nbval) leave the repository's files as they are.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from ctlib import atomic


def publish_figures(files: Iterable[str | Path], folder: str | Path) -> list[Path]:
    """Copy ``files`` (what :func:`ctlib.viz.style.save_figure` returned: PNG, PDF, JSON sidecar) into
    ``folder`` under the same names, each atomically; returns the copies in the order given."""
    sources = [Path(f) for f in files]
    missing = [str(f) for f in sources if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot publish figures that were not saved: {missing}")
    copies = []
    for source in sources:
        target = Path(folder) / source.name
        with atomic.atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        copies.append(target)
    return copies
