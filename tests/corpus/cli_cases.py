"""CLI argument and run-parameter cases: ``ctlib info``, ``archive``, ``interpolate`` and ``run``.

Every refusal is one stderr line with exit status 2, argparse's own errors included. Checks that need
no data or model (argument syntax, output suffix, a parameter's name or type) must cost under a second
of CPU (``max_cpu_s``): they happen before torch or papermill is imported. ``ctlib run`` cases use a tiny
notebook generated here, and the runs go to the corpus's own runs folder ($CTLIB_RUNS_DIR).
"""

from __future__ import annotations

import gzip
import json

import nbformat

from corpus.case import CTLIB, ROOT, TORCH_RSS_MB, Case, Ctx, case, info, loads, refused
from corpus.dicom_cases import write_series
from corpus.nifti_cases import ct_xyz, nifti_bytes

CHEAP = {"max_cpu_s": 1.0}
REAL_NOTEBOOK = "notebooks/slice_interp/2026-11-23_02_vae.ipynb"  # relative: from the repository root
TINY_PARAMETERS = 'lr = 0.001  # learning rate\nsteps = 3\nname = "tiny"\nsizes = [1, 2]\n'


def notebook(c: Ctx, file: str, parameters: list[str], body: str = "print(lr, steps, name, sizes)") -> str:
    """A notebook with one code cell per entry of ``parameters`` (tagged ``parameters``) and a body cell;
    returns its absolute path as an argv token."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]}) for source in parameters]
    nb.cells.append(nbformat.v4.new_code_cell(body))
    nbformat.write(nb, c.dir / file)
    return f"{ROOT}/{c.rel(c.dir / file)}"


def tiny(c: Ctx) -> str:
    return notebook(c, "tiny_params.ipynb", [TINY_PARAMETERS])


def run_refused(
    c: Ctx, args: list[str], names: list[str], keywords: list[str], note: str, **kw: object
) -> Case:
    """``ctlib run <tiny notebook> args`` is refused cheaply."""
    return refused([CTLIB, "run", tiny(c), *args], names, keywords, note, **{**CHEAP, **kw})


def nifti_input(c: Ctx) -> str:
    """A valid small NIfTI for ``ctlib interpolate``'s IN."""
    path = c.dir / "thick.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes(ct_xyz()), mtime=0))
    return c.rel(path)


def interpolate(c: Ctx, *args: str) -> list[str]:
    """``ctlib interpolate args``; ``@RUN@`` stands for an existing (never loaded) checkpoint file, so the
    check under test is the only thing wrong."""
    run = c.dir / "diffusion.pt"
    if "@RUN@" in args and not run.exists():
        run.write_bytes(b"not loaded: the arguments are refused first")
    return [CTLIB, "interpolate", *(c.rel(run) if a == "@RUN@" else a for a in args)]


# --- the ctlib command and ctlib info --------------------------------------------------------------------


@case("cli")
def case_no_subcommand(c: Ctx) -> Case:
    return refused([CTLIB], [], ["command"], "ctlib with no subcommand", **CHEAP)


@case("cli")
def case_unknown_subcommand(c: Ctx) -> Case:
    return refused(
        [CTLIB, "frobnicate"], ["frobnicate"], ["invalid choice", "unknown"], "ctlib frobnicate", **CHEAP
    )


@case("cli")
def case_info_without_path(c: Ctx) -> Case:
    return refused([CTLIB, "info"], ["path"], ["required", "missing", "expected"], "ctlib info", **CHEAP)


@case("cli")
def case_info_extra_argument(c: Ctx) -> Case:
    return refused(
        info("a.nii", "extra_argument"),
        ["extra_argument"],
        ["unrecognized", "unexpected"],
        "ctlib info a.nii extra_argument",
        **CHEAP,
    )


@case("cli")
def case_info_unknown_option(c: Ctx) -> Case:
    return refused(
        info("a.nii", "--frobnicate"),
        ["--frobnicate"],
        ["unrecognized", "unknown"],
        "ctlib info a.nii --frobnicate",
        **CHEAP,
    )


@case("cli")
def case_info_nonexistent(c: Ctx) -> Case:
    return refused(
        info(c.rel(c.dir / "no_such_scan.nii.gz")),
        ["no_such_scan.nii.gz"],
        ["no such"],
        "a path that does not exist",
        **CHEAP,
    )


@case("cli")
def case_info_unknown_format(c: Ctx) -> Case:
    (c.dir / "scan.txt").write_text("not a volume")
    return refused(info(c.rel(c.dir / "scan.txt")), ["scan.txt"], ["format"], "a .txt file", **CHEAP)


@case("cli")
def case_info_series_not_found(c: Ctx) -> Case:
    write_series(c.dir / "series")
    return refused(
        info(c.rel(c.dir / "series"), "--series", "9.9.9"),
        ["9.9.9"],
        ["not found"],
        "--series names a SeriesInstanceUID that is not there",
    )


@case("cli")
def case_archive_bad_number(c: Ctx) -> Case:
    return refused(
        [CTLIB, "archive", "--max-file-mb", "lots", "some_run"],
        ["lots"],
        ["--max-file-mb", "invalid"],
        "--max-file-mb lots",
        **CHEAP,
    )


@case("cli")
def case_archive_unknown_run(c: Ctx) -> Case:
    return refused(
        [CTLIB, "archive", "no_such_run_2020"],
        ["no_such_run_2020"],
        ["not found", "no such"],
        "archive a run that does not exist",
        **CHEAP,
    )


# --- ctlib interpolate: argument checks before any model is loaded ---------------------------------------


@case("cli")
def case_interpolate_without_arguments(c: Ctx) -> Case:
    return refused(interpolate(c), ["IN"], ["expected", "required"], "ctlib interpolate", **CHEAP)


@case("cli")
def case_interpolate_factor_not_a_number(c: Ctx) -> Case:
    return refused(
        interpolate(c, "in.nii.gz", "out.nii.gz", "--run", "@RUN@", "--factor", "two"),
        ["two"],
        ["--factor", "invalid"],
        "--factor two",
        **CHEAP,
    )


@case("cli")
def case_interpolate_factor_one(c: Ctx) -> Case:
    argv = interpolate(c, nifti_input(c), c.rel(c.dir / "out.nii.gz"), "--run", "@RUN@", "--factor", "1")
    return refused(argv, ["--factor"], ["at least 2"], "--factor 1", **CHEAP)


@case("cli")
def case_interpolate_samples_zero(c: Ctx) -> Case:
    argv = interpolate(c, nifti_input(c), c.rel(c.dir / "out.nii.gz"), "--run", "@RUN@", "--samples", "0")
    return refused(argv, ["--samples"], ["at least 1"], "--samples 0", **CHEAP)


@case("cli")
def case_interpolate_std_needs_samples(c: Ctx) -> Case:
    argv = interpolate(
        c, nifti_input(c), c.rel(c.dir / "out.nii.gz"), "--run", "@RUN@", "--std", c.rel(c.dir / "std.nii.gz")
    )
    return refused(argv, ["std.nii.gz"], ["--samples"], "--std with one sample", **CHEAP)


@case("cli")
def case_interpolate_output_suffix(c: Ctx) -> Case:
    argv = interpolate(c, nifti_input(c), c.rel(c.dir / "out.txt"), "--run", "@RUN@")
    return refused(argv, ["out.txt"], [".nii"], "OUT ends with .txt", **CHEAP)


@case("cli")
def case_interpolate_output_exists(c: Ctx) -> Case:
    (c.dir / "out.nii.gz").write_bytes(b"an earlier result")
    argv = interpolate(c, nifti_input(c), c.rel(c.dir / "out.nii.gz"), "--run", "@RUN@")
    return refused(argv, ["out.nii.gz"], ["exists"], "OUT exists, no --overwrite", **CHEAP)


@case("cli")
def case_interpolate_input_missing(c: Ctx) -> Case:
    argv = interpolate(
        c, c.rel(c.dir / "no_such_thick.nii.gz"), c.rel(c.dir / "out.nii.gz"), "--run", "@RUN@"
    )
    return refused(argv, ["no_such_thick.nii.gz"], ["no such"], "IN does not exist", **CHEAP)


@case("cli")
def case_interpolate_unknown_sampler(c: Ctx) -> Case:
    argv = interpolate(c, nifti_input(c), c.rel(c.dir / "out.nii.gz"), "--run", "@RUN@", "--sampler", "warp9")
    return refused(argv, ["warp9"], ["sampler"], "--sampler warp9", max_rss_mb=TORCH_RSS_MB)


# --- ctlib run: notebooks and parameters -----------------------------------------------------------------


@case("params")
def case_run_valid_overrides(c: Ctx) -> Case:
    argv = [CTLIB, "run", tiny(c), "-P", "lr=1e-4", "-P", "steps=5", "-P", "sizes=[3, 4, 5]"]
    return loads(
        argv,
        {"status": "completed"},
        "a run of the tiny notebook with three valid overrides",
        params={"lr": 1e-4, "steps": 5, "name": "tiny", "sizes": [3, 4, 5]},
        timeout_s=180.0,
        max_rss_mb=TORCH_RSS_MB,
    )


@case("params")
def case_missing_parameter_set(c: Ctx) -> Case:
    return run_refused(c, ["-p", "no_such_set"], ["no_such_set"], ["not found"], "-p names no YAML file")


@case("params")
def case_override_without_equals(c: Ctx) -> Case:
    return run_refused(c, ["-P", "steps"], ["steps"], ["name=value", "NAME=VALUE", "form"], "-P steps")


@case("params")
def case_override_without_name(c: Ctx) -> Case:
    return run_refused(c, ["-P", "=3"], ["=3"], ["name=value", "NAME=VALUE", "form"], "-P =3")


@case("params")
def case_override_malformed_yaml(c: Ctx) -> Case:
    return run_refused(c, ["-P", "sizes=[1, 2"], ["sizes"], ["YAML"], "-P sizes=[1, 2 (unclosed list)")


@case("params")
def case_override_malformed_yaml_mapping(c: Ctx) -> Case:
    return run_refused(c, ["-P", "name={a: b: c}"], ["name"], ["YAML"], "-P name={a: b: c}")


@case("params")
def case_override_unknown_name(c: Ctx) -> Case:
    return run_refused(
        c,
        ["-P", "learning_rate=0.1"],
        ["learning_rate"],
        ["unknown"],
        "-P learning_rate=0.1: the notebook declares lr",
    )


@case("params")
def case_override_wrong_type(c: Ctx) -> Case:
    return run_refused(c, ["-P", "steps=many"], ["steps"], ["int"], "-P steps=many")


@case("params")
def case_override_bool_for_int(c: Ctx) -> Case:
    return run_refused(c, ["-P", "steps=true"], ["steps"], ["int"], "-P steps=true")


@case("params")
def case_override_float_for_int(c: Ctx) -> Case:
    return run_refused(c, ["-P", "steps=1e400"], ["steps"], ["int"], "-P steps=1e400")


@case("params")
def case_override_list_for_float(c: Ctx) -> Case:
    return run_refused(c, ["-P", "lr=[1, 2]"], ["lr"], ["float"], "-P lr=[1, 2]")


@case("params")
def case_override_run_id(c: Ctx) -> Case:
    return run_refused(
        c, ["-P", "run_id=mine"], ["run_id"], ["unknown", "run id", "run_id"], "-P run_id=mine"
    )


@case("params")
def case_real_notebook_unknown_override(c: Ctx) -> Case:
    return refused(
        [CTLIB, "run", REAL_NOTEBOOK, "-P", "no_such_knob=1"],
        ["no_such_knob"],
        ["unknown"],
        "a committed notebook, an unknown override",
        **CHEAP,
    )


@case("params")
def case_real_notebook_missing_set(c: Ctx) -> Case:
    return refused(
        [CTLIB, "run", REAL_NOTEBOOK, "-p", "cpu-imaginary"],
        ["cpu-imaginary"],
        ["not found"],
        "a committed notebook, a parameter set it does not have",
        **CHEAP,
    )


@case("params")
def case_notebook_not_ipynb(c: Ctx) -> Case:
    (c.dir / "tiny.py").write_text(TINY_PARAMETERS)
    return refused(
        [CTLIB, "run", f"{ROOT}/{c.rel(c.dir / 'tiny.py')}"],
        ["tiny.py"],
        [".ipynb"],
        "a .py file given as the notebook",
        **CHEAP,
    )


@case("params")
def case_notebook_missing(c: Ctx) -> Case:
    return refused(
        [CTLIB, "run", f"{ROOT}/{c.rel(c.dir / 'absent.ipynb')}"],
        ["absent.ipynb"],
        ["not found", "no such"],
        "a notebook that does not exist",
        **CHEAP,
    )


@case("params")
def case_notebook_is_folder(c: Ctx) -> Case:
    (c.dir / "folder.ipynb").mkdir()
    return refused(
        [CTLIB, "run", f"{ROOT}/{c.rel(c.dir / 'folder.ipynb')}"],
        ["folder.ipynb"],
        ["not found", "folder", "not a file"],
        "a folder named .ipynb",
        **CHEAP,
    )


@case("params")
def case_notebook_not_json(c: Ctx) -> Case:
    (c.dir / "broken.ipynb").write_text('{"cells": [ {"cell_type": "code", ')
    return refused(
        [CTLIB, "run", f"{ROOT}/{c.rel(c.dir / 'broken.ipynb')}"],
        ["broken.ipynb"],
        ["JSON", "notebook"],
        "a notebook cut in the middle of its JSON",
        **CHEAP,
    )


@case("params")
def case_notebook_not_a_notebook(c: Ctx) -> Case:
    (c.dir / "list.ipynb").write_text(json.dumps([1, 2, 3]))
    return refused(
        [CTLIB, "run", f"{ROOT}/{c.rel(c.dir / 'list.ipynb')}"],
        ["list.ipynb"],
        ["notebook", "nbformat"],
        "valid JSON that is no notebook",
        **CHEAP,
    )


@case("params")
def case_two_parameters_cells(c: Ctx) -> Case:
    path = notebook(c, "two_cells.ipynb", [TINY_PARAMETERS, "extra = 1\n"])
    return refused(
        [CTLIB, "run", path], ["two_cells.ipynb"], ["parameters"], "two cells tagged parameters", **CHEAP
    )


@case("params")
def case_parameters_cell_syntax_error(c: Ctx) -> Case:
    path = notebook(c, "bad_cell.ipynb", ["lr = 0.001\nsteps = = 3\n"])
    return refused(
        [CTLIB, "run", path],
        ["bad_cell.ipynb"],
        ["not valid Python", "syntax"],
        "a parameters cell that is not Python",
        **CHEAP,
    )
