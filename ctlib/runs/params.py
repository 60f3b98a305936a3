"""Notebook parameters: the `parameters` cell's defaults, then a parameter set, then overrides.

Resolution order (nanoGPT style): the notebook's own flat, commented defaults; then
``papermill_params/<notebook stem>/<set>.yaml``; then explicit overrides (the command line). Every
parameter is resolved, not just the overridden ones, so ``params.json`` describes the whole run.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import yaml

from ctlib import paths

PARAMETERS_TAG = "parameters"
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
SWEEP_KEY = "sweep"  # the section of a parameter set that names the grid of a sweep
RUN_ID_PARAMETER = "run_id"  # a notebook that declares it receives its own run id


class Expression(str):
    """Source text of a parameter default that is not a literal (known only inside the kernel)."""


@dataclasses.dataclass(frozen=True)
class ResolvedParameters:
    """All parameters of one run and where each value came from."""

    values: dict[str, Any]
    sources: dict[str, str]  # name -> "default" | "set" | "override"
    defaults: dict[str, Any]
    parameter_set: str | None
    set_file: Path | None
    overrides: dict[str, Any]

    def injected(self) -> dict[str, Any]:
        """The values papermill must inject: everything that differs in origin from the notebook."""
        return {k: v for k, v in self.values.items() if self.sources[k] != "default"}


def notebook_stem(notebook: str | Path) -> str:
    """File name without ``.ipynb``: the key of the notebook's folder in ``papermill_params/``."""
    return Path(notebook).name.removesuffix(".ipynb")


def resolve_notebook_path(notebook: str | Path) -> Path:
    """An absolute notebook path; a relative one is taken from the repository root."""
    path = Path(notebook).expanduser()
    path = path if path.is_absolute() else paths.repo_root() / path
    if path.suffix != ".ipynb":
        raise ValueError(f"expected a .ipynb notebook, found {str(notebook)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"notebook not found: {path}")
    return path.resolve()


def notebook_defaults(notebook: str | Path) -> dict[str, Any]:
    """Names and default values of the notebook's ``parameters`` cell (empty if it has none).

    The cell holds flat literals, one per line; a value that is not a literal (an expression) is
    kept as its source text, because it is only known once the kernel evaluates it.
    """
    path = resolve_notebook_path(notebook)
    cells = [
        c for c in _notebook_cells(path)
        if c.get("cell_type") == "code" and PARAMETERS_TAG in (c.get("metadata") or {}).get("tags", [])
    ]
    if not cells:
        return {}
    if len(cells) > 1:
        raise ValueError(f"{path}: {len(cells)} cells are tagged {PARAMETERS_TAG!r}, expected one")
    # Magics and shell escapes are not Python; a parameters cell should not hold them anyway.
    source = "\n".join(
        line for line in _source(cells[0]).splitlines() if not line.lstrip().startswith(("%", "!"))
    )
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(
            f"{path}: the parameters cell is not valid Python (line {exc.lineno}): {exc.msg}"
        ) from exc
    defaults: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    defaults[target.id] = ast.literal_eval(value)
                except ValueError:
                    defaults[target.id] = Expression(ast.get_source_segment(source, value))
    return defaults


def _notebook_cells(path: Path) -> list[dict[str, Any]]:
    """The cells of a notebook file (nbformat 4 JSON), read as plain JSON: nbformat's import and
    schema validation cost over a second, and only the parameters cell is needed here."""
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: not a readable notebook ({type(err).__name__}: {err})") from None
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise ValueError(f"{path}: not a notebook (no list of cells; nbformat 4 expected)")
    return cells


def _source(cell: dict[str, Any]) -> str:
    """A cell's source: nbformat 4 stores a string or a list of lines."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def params_root_default() -> Path:
    """``<repo>/papermill_params``: one folder per notebook stem, one YAML file per set."""
    return paths.repo_root() / "papermill_params"


def available_sets(notebook: str | Path, params_root: Path | None = None) -> list[str]:
    """Names of the parameter sets stored for a notebook, sorted."""
    folder = Path(params_root or params_root_default()) / notebook_stem(notebook)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_set(notebook: str | Path, parameter_set: str, params_root: Path | None = None) -> tuple[dict, Path]:
    """The mapping stored in ``<params_root>/<stem>/<set>.yaml`` and its path."""
    root = Path(params_root or params_root_default())
    stem = notebook_stem(notebook)
    file = root / stem / f"{parameter_set}.yaml"
    if not file.is_file():
        sets = available_sets(notebook, root)
        known = ", ".join(sets) if sets else f"none (no YAML files in {root / stem})"
        raise FileNotFoundError(
            f"parameter set {parameter_set!r} not found for notebook {stem!r}: expected {file}; "
            f"existing sets: {known}"
        )
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{file}: expected a mapping of parameter names to values, found {type(data).__name__}"
        )
    data.pop(SWEEP_KEY, None)  # the grid of `ctlib sweep` (load_sweep_section), not a parameter
    return data, file


def load_sweep_section(
    notebook: str | Path, parameter_set: str, params_root: Path | None = None
) -> dict[str, Any]:
    """The ``sweep:`` mapping of a parameter set (``grid``: name -> list of values, ``seeds``: N), or ``{}``.

    A set that names a grid is a plain set for ``ctlib run`` (the grid is ignored there) and the sweep's
    definition for ``ctlib sweep NOTEBOOK -p SET``."""
    load_set(notebook, parameter_set, params_root)  # the same refusals as a run
    file = Path(params_root or params_root_default()) / notebook_stem(notebook) / f"{parameter_set}.yaml"
    section = (yaml.safe_load(file.read_text()) or {}).get(SWEEP_KEY) or {}
    if not isinstance(section, dict) or not isinstance(section.get("grid", {}), dict):
        raise ValueError(f"{file}: '{SWEEP_KEY}:' must be a mapping with 'grid: {{name: [values, ...]}}'")
    return section


def resolve_parameters(
    notebook: str | Path,
    parameter_set: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    params_root: Path | None = None,
) -> ResolvedParameters:
    """Notebook defaults, then the YAML parameter set, then overrides; unknown names are refused."""
    defaults = notebook_defaults(notebook)
    values, sources = dict(defaults), dict.fromkeys(defaults, "default")
    set_values, set_file = load_set(notebook, parameter_set, params_root) if parameter_set else ({}, None)
    overrides = dict(overrides or {})
    for origin, layer, where in (
        ("set", set_values, str(set_file)),
        ("override", overrides, "overrides"),
    ):
        unknown = sorted(set(layer) - set(defaults))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} in {where}: notebook {notebook_stem(notebook)!r} declares "
                f"{sorted(defaults) or 'no parameters (no cell tagged parameters)'}"
            )
        if RUN_ID_PARAMETER in layer:
            raise ValueError(
                f"{where} sets {RUN_ID_PARAMETER!r}: that parameter is the run's own id, filled in by "
                f"run_notebook; pass run_id=... instead (name an upstream run '<step>_run_id')"
            )
        for name, value in layer.items():
            values[name] = _checked(name, defaults[name], value, where)
            sources[name] = origin
    return ResolvedParameters(values, sources, defaults, parameter_set, set_file, overrides)


def _checked(name: str, default: Any, value: Any, where: str) -> Any:
    """``value`` converted to the type of the notebook default, or a ValueError saying why not."""
    if default is None or value is None or type(default) is str and isinstance(value, str):
        return value
    if isinstance(default, float) and isinstance(value, str):
        value = yaml_float(value)  # PyYAML (YAML 1.1) reads `lr: 1e-4` as a string
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, (int, float)),  # `-P name=123` arrives as a number
        list: lambda v: isinstance(v, (list, tuple)),
        tuple: lambda v: isinstance(v, (list, tuple)),
        dict: lambda v: isinstance(v, dict),
    }.get(type(default))
    if ok is None:  # an expression default or an exotic literal: the notebook will judge
        return value
    if not ok(value):
        raise ValueError(
            f"parameter {name!r} in {where}: expected {type(default).__name__} (notebook default "
            f"{default!r}), found {type(value).__name__} {value!r}"
        )
    if isinstance(default, str):
        return str(value)
    if isinstance(default, float):
        return float(value)
    return list(value) if isinstance(default, list) else value


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` from a command line -> ``(key, value)`` with the value read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected an override of the form name=value, found {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ValueError(
            f"override {key.strip()}={raw}: the value is not valid YAML ({problem}); "
            "quote text, e.g. -P 'name=\"a b\"'"
        ) from None
    return key.strip(), yaml_float(value) if isinstance(value, str) else value


def yaml_float(text: str) -> float | str:
    """``"1e-4"`` -> ``1e-4``: YAML 1.1 wants a dot in exponent floats; other text is unchanged."""
    return float(text) if _FLOAT.fullmatch(text.strip()) else text
