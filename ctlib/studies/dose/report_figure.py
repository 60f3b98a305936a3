"""One figure per patient report (``ctlib.studies.dose.report``): DVH curves (plan solid, prediction dashed),
an axial colorwash of plan and prediction through the target with the PTV outlines, the constraint table
with pass / FAIL marks, and the gamma pass rates, scores and notes as text.

The axial slice is the one holding the most PTV voxels (the slice of the highest dose when the patient has no
PTV); colorwash and isodose lines are the slice viewer's (``figures.dose_overlay_rgb``), isodose lines at the
prescriptions of the PTVs present; the display follows ``ctlib.studies.dose.figures``.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.cm import ScalarMappable

from ctlib.data import windows
from ctlib.data.windows import HUWindow
from ctlib.studies.dose import features, figures
from ctlib.studies.dose.patient_file import DosePatient
from ctlib.studies.dose.report import GAMMA_CUTOFF_PERCENT, PatientReport, metric_label
from ctlib.viz import panels, style

PASS_COLOUR = "#cde3f2"  # light Okabe-Ito blue
FAIL_COLOUR = "#f4c7ad"  # light Okabe-Ito vermillion
TABLE_FONT_PT = 12
FOOTNOTE_CHARS = 105
NOTE_CHARS = 62


def target_slice(patient: DosePatient, dose_gy: np.ndarray) -> int:
    """Axial index through the target: the slice with the most PTV voxels (else the hottest slice)."""
    ptvs = [patient.mask(n) for n in features.PRESCRIPTION_GY if n in _present(patient)]
    if ptvs:
        return figures.busiest_slice(np.logical_or.reduce(ptvs))
    return int(np.unravel_index(int(np.argmax(dose_gy)), np.shape(dose_gy))[0])


def _present(patient: DosePatient) -> list[str]:
    return [str(n) for n, p in zip(patient.roi_names, patient.present, strict=True) if p]


def _verdict(value: object) -> str:
    return "n/a" if pd.isna(value) else ("pass" if value else "FAIL")


def _crop(footprint: np.ndarray, margin: int = 6) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of a ``(H, W)`` mask grown by ``margin`` pixels
    (the whole plane when the mask is empty)."""
    if not footprint.any():
        return slice(None), slice(None)
    box = []
    for axis in (1, 0):
        hits = np.flatnonzero(np.any(footprint, axis=axis))
        box.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + margin + 1))
    return box[0], box[1]


def _table_panel(ax: plt.Axes, report: PatientReport) -> list[str]:
    """The checked constraints with pass / FAIL cells; sources as numbered footnotes under the table.
    Returns the sources in footnote order."""
    ax.axis("off")
    ax.set_title("clinical constraints (D0.1cc stands for the maximum; V in % of the volume)", fontsize=12)
    checked = report.constraints[report.constraints["note"] == ""]
    if checked.empty:
        ax.text(0.0, 1.0, "no constraint could be checked", va="top", transform=ax.transAxes)
        return []
    sources = list(dict.fromkeys(checked["source"]))
    header = ["constraint", "source", *(["plan", ""] if report.has_plan else []), "prediction", ""]
    pairs = [("plan_value", "plan_pass")] if report.has_plan else []
    pairs.append(("predicted_value", "predicted_pass"))
    rows, fills = [], []
    for _, row in checked.iterrows():
        cells = [row["constraint"], f"[{sources.index(row['source']) + 1}]"]
        for value, verdict in pairs:
            cells += [f"{row[value]:.1f} {row['unit']}", _verdict(row[verdict])]
        rows.append(cells)
        fills.append([PASS_COLOUR if c == "pass" else FAIL_COLOUR if c == "FAIL" else "white" for c in cells])
    footnotes = [line for i, source in enumerate(sources) for line in
                 textwrap.wrap(f"[{i + 1}] {source}", width=FOOTNOTE_CHARS, subsequent_indent="     ")]
    line_h = min(0.05, 0.98 / (len(rows) + 1.5 + 0.8 * len(footnotes)))
    height = line_h * (len(rows) + 1)
    widths = [0.34, 0.1, *([0.14, 0.08] if report.has_plan else []), 0.14, 0.08]
    table = ax.table(cellText=rows, colLabels=header, cellColours=fills, cellLoc="left",
                     colWidths=widths, bbox=[0.0, 1.0 - height, sum(widths), height])
    table.auto_set_font_size(False)
    table.set_fontsize(TABLE_FONT_PT)
    text = ax.text(0.0, 1.0 - height - 0.5 * line_h, "\n".join(footnotes), va="top", ha="left",
                   fontsize=TABLE_FONT_PT, linespacing=1.3, transform=ax.transAxes)
    for artist in (table, text):  # placed in axes coordinates: the layout need not make room around them
        artist.set_in_layout(False)
    return sources


def _grouped_notes(notes: list[str], sources: list[str]) -> list[str]:
    """Notes as wrapped lines, those sharing a prefix (``"the reference plan itself fails: ..."``) under one
    heading, each source replaced by its footnote number ``[k]``."""
    groups: dict[str, list[str]] = {}
    for note in notes:
        for i, source in enumerate(sources):
            note = note.replace(f"({source})", f"[{i + 1}]")
        head, _, rest = note.partition(": ")
        groups.setdefault(head if rest else note, []).append(rest)
    lines = []
    for head, items in groups.items():
        lines += textwrap.wrap(head + (":" if any(items) else ""), width=NOTE_CHARS)
        for item in filter(None, items):
            lines += textwrap.wrap(item, width=NOTE_CHARS, initial_indent="  - ", subsequent_indent="    ")
    return lines


def _text_panel(ax: plt.Axes, report: PatientReport, sources: list[str]) -> None:
    """Gamma, scores, constraints met and the notes (sources cited by their footnote number)."""
    ax.axis("off")
    lines = [f"patient {report.patient_id}"]
    if report.gamma:
        lines.append(f"gamma (global, {GAMMA_CUTOFF_PERCENT:g} % cutoff, {report.gamma_region}):")
        lines += [f"  {name}: {rate:.1f} % pass ({report.gamma_voxels.get(name, 0)} voxels)"
                  for name, rate in report.gamma.items()]
    if report.scores:
        lines.append(f"dose score (MAE in the possible-dose mask): {report.scores['dose_score_gy']:.2f} Gy")
        lines.append(f"DVH score (mean |diff| of {len(report.dvh_metrics)} metrics): "
                     f"{report.scores['dvh_score_gy']:.2f} Gy")
        worst = report.dvh_metrics.sort_values("abs_diff_gy", ascending=False).head(1)
        for _, row in worst.iterrows():
            lines.append(f"  largest: {row['structure']} {metric_label(row['metric'])} "
                         f"{row['predicted_gy']:.1f} vs {row['plan_gy']:.1f} Gy")
    checked = report.constraints.dropna(subset=["predicted_pass"])
    met = [f"prediction {int(checked['predicted_pass'].sum())}/{len(checked)}"]
    if report.has_plan:
        planned = report.constraints.dropna(subset=["plan_pass"])
        met.insert(0, f"plan {int(planned['plan_pass'].sum())}/{len(planned)}")
    lines.append("constraints met: " + ", ".join(met))
    lines += _grouped_notes(report.notes, sources)
    text = ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=12, transform=ax.transAxes)
    text.set_in_layout(False)


def report_figure(
    report: PatientReport,
    patient: DosePatient,
    pred_dose_gy: np.ndarray,
    *,
    plan_dose_gy: np.ndarray | None = None,
    window: HUWindow = windows.SOFT_TISSUE,
) -> plt.Figure:
    """One figure of a patient report: DVHs, axial colorwash of plan and prediction, constraint table, text.

    ``plan_dose_gy`` defaults to ``patient.dose_gy`` (as in ``report.patient_report``); without a plan
    (``report.has_plan`` False) only the prediction is drawn.
    """
    plan = np.asarray(patient.dose_gy if plan_dose_gy is None else plan_dose_gy)
    pred = np.asarray(pred_dose_gy)
    if pred.shape != patient.shape:
        raise ValueError(f"pred_dose_gy has shape {pred.shape}, expected the patient's {patient.shape}")
    doses = {"plan": plan, "predicted": pred} if report.has_plan else {"predicted": pred}
    present = _present(patient)
    colours = figures.structure_colors(present)
    with plt.rc_context(style.RC_PARAMS):
        fig = plt.figure(figsize=(18, 14), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=(1.0, 1.4))
        axes = top.subplots(1, 1 + len(doses), width_ratios=(1.7, *([1.0] * len(doses))))
        figures.dvh_plot({name: report.curves[name] for name in doses}, structures=present, ax=axes[0],
                         title="cumulative DVH")
        index = target_slice(patient, plan if report.has_plan else pred)
        max_gy = max(float(d.max()) for d in doses.values())
        levels = [rx for name, rx in features.PRESCRIPTION_GY.items() if name in present]
        rows, cols = _crop(patient.possible_dose_mask[index])
        ct_plane = patient.ct_hu[index][rows, cols]
        for ax, (name, dose) in zip(axes[1:], doses.items(), strict=True):
            rgb = figures.dose_overlay_rgb(ct_plane, dose[index][rows, cols], window=window, max_gy=max_gy,
                                           isodose_levels_gy=levels)
            panels.show_plane(ax, rgb, "axial", patient.spacing_mm)
            for ptv in (n for n in features.PRESCRIPTION_GY if n in present):
                plane = patient.mask(ptv)[index][rows, cols]
                if plane.any():
                    ax.contour(plane.astype(float), levels=[0.5], colors=[colours[ptv]], linewidths=1.2)
            ax.set(xticks=[], yticks=[], title=f"{name}, axial {index}")
        wash = ScalarMappable(mcolors.Normalize(0.0, max_gy), figures.DOSE_CMAP)
        top.colorbar(wash, ax=list(axes[1:]), shrink=0.8, label="dose (Gy)")
        table_ax, text_ax = bottom.subplots(1, 2, width_ratios=(1.35, 1.0))
        _text_panel(text_ax, report, _table_panel(table_ax, report))
        fig.suptitle(f"{report.patient_id}: predicted vs planned dose" if report.has_plan
                     else f"{report.patient_id}: predicted dose (no plan)")
    return fig
