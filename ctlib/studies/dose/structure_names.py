"""Clinical RTSTRUCT ROI names -> canonical OpenKBP names (TG-263-style variants, ``structure_names.yaml``).

Matching (``match_name``), on the name as written in the RTSTRUCT:

1. Split camelCase (``RightParotid`` -> ``Right Parotid``), lower-case, and cut into words of letters
   and numbers (``PTV_70Gy`` -> ``ptv 70 gy``); every other character is a separator.
2. Targets: a ``ptv`` word, exactly one number and optionally a unit word (``gy`` / ``cgy``). The number
   is the dose level, in cGy when ``>= 1000`` or followed by ``cgy``; a level within ``tolerance_gy``
   of 70 / 63 / 56 Gy gives ``PTV70`` / ``PTV63`` / ``PTV56``.
3. Organs: the laterality words (l, lt, left, r, rt, right, ...) are taken out; the remaining words,
   joined without separators, must equal a variant in the file. A paired organ (parotid) needs exactly
   one side; it may also be glued to the name (``LParotid``, ``parotidlt``).

Refusal policy: ``None`` rather than a guess. A name maps to ``None`` when it is unknown, carries any
word the file does not list (``SpinalCord_PRV5``, ``PTV70_eval``, ``Parotid_L_opt``: derived
structures are not the structure), names a paired organ without a side or with both (``Parotids``,
``Parotid L+R``), gives a side to an unpaired organ (``Brainstem_L``), or names a PTV without a level
or with a level that is not an OpenKBP prescription (``PTV_High``, ``PTV66``, ``CTV70``). When two ROIs of
one RTSTRUCT map to the same canonical name, ``map_roi_names`` refuses the file (``CTInputError``).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from ctlib.errors import CTInputError
from ctlib.io.openkbp import ROI_NAMES

MAPPING_FILE = "structure_names.yaml"
_CAMEL = re.compile(r"(?<=[A-Za-z][a-z])(?=[A-Z])")  # not inside "6300cGy"
_WORD = re.compile(r"[a-z]+|\d+(?:[.,]\d+)?")


@dataclass(frozen=True)
class NameMatch:
    """The outcome of matching one raw ROI name: ``canonical`` (or ``None``) and why."""

    raw: str
    canonical: str | None
    reason: str


@dataclass(frozen=True)
class _Mapping:
    left: frozenset[str]
    right: frozenset[str]
    organs: dict[str, str]                # normalized variant -> canonical
    paired: dict[str, tuple[str, str]]    # normalized variant -> (left canonical, right canonical)
    target_words: frozenset[str]
    levels_gy: dict[str, float]
    tolerance_gy: float
    unit_words: frozenset[str]


def _words(raw: str) -> list[str]:
    return _WORD.findall(_CAMEL.sub(" ", raw).lower())


@functools.lru_cache(maxsize=4)
def load_mapping(path: str | os.PathLike | None = None) -> _Mapping:
    """Read and check the mapping file (default: ``structure_names.yaml`` next to this module)."""
    if path is None:
        text = resources.files("ctlib.studies.dose").joinpath(MAPPING_FILE).read_text()
        source = MAPPING_FILE
    else:
        text, source = open(path).read(), os.fspath(path)
    spec: dict[str, Any] = yaml.safe_load(text)
    seen: dict[str, str] = {}

    def claim(variant: str, owner: str) -> str:
        variant = str(variant)
        if _words(variant) != [variant]:
            raise ValueError(
                f"{source}: variant {variant!r} of {owner} is not normalized (lower case, no separators)"
            )
        if variant in seen:
            raise ValueError(f"{source}: variant {variant!r} is listed for both {seen[variant]} and {owner}")
        seen[variant] = owner
        return variant

    organs, paired = {}, {}
    for canonical, variants in spec["organs"].items():
        if canonical not in ROI_NAMES:
            raise ValueError(f"{source}: {canonical!r} is not an OpenKBP ROI name {ROI_NAMES}")
        organs.update({claim(v, canonical): canonical for v in variants})
    for organ, entry in spec["paired_organs"].items():
        sides = (entry["left"], entry["right"])
        if not set(sides) <= set(ROI_NAMES):
            raise ValueError(f"{source}: {organ} sides {sides} are not OpenKBP ROI names")
        paired.update({claim(v, organ): sides for v in entry["variants"]})
    targets = spec["targets"]
    if not set(targets["levels_gy"]) <= set(ROI_NAMES):
        raise ValueError(f"{source}: target names {list(targets['levels_gy'])} are not OpenKBP ROI names")
    left, right = frozenset(spec["laterality"]["left"]), frozenset(spec["laterality"]["right"])
    if left & right:
        raise ValueError(f"{source}: {sorted(left & right)} listed as both left and right")
    return _Mapping(left=left, right=right, organs=organs, paired=paired,
                    target_words=frozenset(targets["words"]),
                    levels_gy={k: float(v) for k, v in targets["levels_gy"].items()},
                    tolerance_gy=float(targets["tolerance_gy"]), unit_words=frozenset(targets["unit_words"]))


def _match_target(raw: str, words: list[str], m: _Mapping) -> NameMatch:
    numbers = [w for w in words if w[0].isdigit()]
    units = [w for w in words if w in m.unit_words]
    other = [w for w in words if not w[0].isdigit() and w not in m.unit_words and w not in m.target_words]
    if other:
        return NameMatch(
            raw, None, f"target name with unrecognized words {other} (derived or unknown volume)"
        )
    if len(numbers) != 1 or len(units) > 1:
        return NameMatch(
            raw, None, "target name needs exactly one dose level (e.g. PTV70, PTV_7000, PTV 70Gy)"
        )
    level = float(numbers[0].replace(",", "."))
    if level >= 1000 or units == ["cgy"]:
        level /= 100.0
    for name, prescription in m.levels_gy.items():
        if abs(level - prescription) <= m.tolerance_gy:
            return NameMatch(raw, name, f"target at {level:g} Gy")
    return NameMatch(raw, None, f"target level {level:g} Gy is not one of {sorted(m.levels_gy.values())} Gy")


def _glued_side(organ: str, m: _Mapping) -> tuple[set[str], str]:
    """Sides glued to a paired organ's name (``lparotid``, ``parotidrt``) and the organ without them."""
    for side, words in (("left", m.left), ("right", m.right)):
        for word in sorted(words, key=len, reverse=True):
            if organ.startswith(word) and organ[len(word):] in m.paired:
                return {side}, organ[len(word):]
            if organ.endswith(word) and organ[: -len(word)] in m.paired:
                return {side}, organ[: -len(word)]
    return set(), organ


def match_name(raw: str, mapping: _Mapping | None = None) -> NameMatch:
    """Match one raw ROI name to a canonical OpenKBP name, with the reason (see the module docstring)."""
    m = mapping or load_mapping()
    words = _words(str(raw))
    if not words:
        return NameMatch(raw, None, "empty name")
    if any(w in m.target_words for w in words):
        return _match_target(raw, words, m)
    if any(w[0].isdigit() for w in words):
        return NameMatch(raw, None, "organ name with a number (a margin or derived structure?)")
    sides = {"left" for w in words if w in m.left} | {"right" for w in words if w in m.right}
    organ = "".join(w for w in words if w not in m.left and w not in m.right)
    if organ in m.organs:
        if sides:
            return NameMatch(raw, None, f"{m.organs[organ]} is not a paired organ but the name gives a side")
        return NameMatch(raw, m.organs[organ], "organ")
    if organ not in m.paired and not sides:
        sides, organ = _glued_side(organ, m)
    if organ in m.paired:
        if len(sides) != 1:
            return NameMatch(raw, None, "paired organ needs exactly one side (left or right)")
        left, right = m.paired[organ]
        return NameMatch(raw, left if sides == {"left"} else right, f"paired organ, {sides.pop()} side")
    return NameMatch(raw, None, f"unknown structure name (normalized {organ!r})")


def canonical_name(raw: str) -> str | None:
    """The canonical OpenKBP name of a clinical ROI name, or ``None`` when unknown or ambiguous."""
    return match_name(raw).canonical


def map_roi_names(raw_names: list[str], source: str | os.PathLike | None = None) -> dict[str, str]:
    """``{canonical: raw}`` for the ROI names that match; ``CTInputError`` when two claim one structure."""
    found: dict[str, str] = {}
    for raw in raw_names:
        canonical = canonical_name(raw)
        if canonical is None:
            continue
        if canonical in found:
            raise CTInputError(source, f"ROIs {found[canonical]!r} and {raw!r} both map to {canonical}: "
                                       "rename one so the structure is unambiguous")
        found[canonical] = raw
    return found
