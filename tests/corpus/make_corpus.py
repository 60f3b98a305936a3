"""Generate the bad-input corpus: every case's input files under a root folder, and ``cases.json``.

Usage: ``python tests/corpus/make_corpus.py OUTDIR`` (a few seconds; OUTDIR must be empty or absent).
Run the cases with ``python tests/corpus/runner.py``, or under pytest: ``tests/test_bad_input_corpus.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``corpus`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus import checkpoint_cases, cli_cases, dicom_cases, nifti_cases, openkbp_cases  # noqa: E402, F401
from corpus.case import CATEGORIES, REGISTRY, Case, Ctx  # noqa: E402

MANIFEST = "cases.json"


def case_ids() -> list[str]:
    """Every case id, ``<category>-<name>``, by category then registration order (no file written)."""
    return sorted(REGISTRY, key=lambda case_id: CATEGORIES.index(REGISTRY[case_id][0]))


def generate(root: str | Path, only: Iterable[str] | None = None) -> list[Case]:
    """Write the inputs of every case (or of the ids in ``only``) under ``root``; return the cases."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    wanted = None if only is None else set(only)
    unknown = sorted((wanted or set()) - set(REGISTRY))
    if unknown:
        raise KeyError(f"unknown case id(s) {unknown}")
    cases = []
    for case_id in case_ids():
        category, build = REGISTRY[case_id]
        if wanted is not None and case_id not in wanted:
            continue
        folder = root / category / case_id.split("-", 1)[1]
        folder.mkdir(parents=True)
        built = build(Ctx(case_id, root, folder))
        built.id, built.category = case_id, category
        cases.append(built)
    (root / MANIFEST).write_text(json.dumps([c.to_json() for c in cases], indent=1))
    return cases


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: make_corpus.py OUTDIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    if out.exists() and any(out.iterdir()):
        print(f"make_corpus.py: {out}: not empty", file=sys.stderr)
        return 2
    cases = generate(out)
    print(f"{len(cases)} cases written to {out.resolve()} (manifest: {MANIFEST})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
