"""Coded concepts of a class: what a segment is, in the words DICOM SEG readers understand.

A DICOM SEG describes each segment with a *segmented property category* (e.g.
"Anatomical Structure") and a *segmented property type* (e.g. "Liver"), each a coded
concept: a coding scheme designator (``SCT`` for SNOMED CT, ``DCM`` for DICOM's own), a
code value and a code meaning. Model files declare them per class; a store records them
in its provenance and the SEG writer uses them.

A code is given either in full, ``{scheme: SCT, code: "10200004", meaning: Liver}``, or
as a keyword of pydicom's SNOMED CT dictionary (``Liver``, ``AnatomicalStructure``),
which fills in the code and its meaning. Codes are checked here, once, at the edge: the
lengths and characters DICOM allows (SH code values and designators, LO meanings), and
for SNOMED CT a numeric identifier whose Verhoeff check digit is right, so a mistyped
code fails when the model file is written or read, not in a viewer months later.

Classes without a concept get the generic ``DEFAULT_CONCEPT`` (Tissue / Tissue), as
highdicom's own examples describe segments they know nothing more about.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

__all__ = [
    "DEFAULT_CONCEPT",
    "Code",
    "SegmentConcept",
    "sct_check_digit_ok",
]

SCHEME = re.compile(r"^[A-Z0-9][A-Z0-9_.\-]{0,15}$")  # SH, upper case as the registry has them
SCT_ID = re.compile(r"^[1-9][0-9]{5,17}$")  # SNOMED CT identifiers: 6 to 18 digits
MAX_CODE = 16  # SH
MAX_MEANING = 64  # LO

# Verhoeff's dihedral-group tables (as SNOMED CT specifies for its check digit)
_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]


def sct_check_digit_ok(identifier: str) -> bool:
    """True when a SNOMED CT identifier's last digit is its Verhoeff check digit."""
    check = 0
    for position, digit in enumerate(reversed(identifier)):
        check = _D[check][_P[position % 8][int(digit)]]
    return check == 0


class Code(BaseModel):
    """One coded concept: coding scheme designator, code value and code meaning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: str
    code: str
    meaning: str

    @model_validator(mode="before")
    @classmethod
    def _keyword(cls, data: Any) -> Any:
        """A plain string is a keyword of pydicom's SNOMED CT dictionary."""
        if isinstance(data, str):
            return _sct_keyword(data)
        return data

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not SCHEME.match(value):
            raise ValueError(
                f"coding scheme {value!r} is not a DICOM designator (e.g. SCT, DCM; "
                "upper case, at most 16 characters)"
            )
        return value

    @field_validator("meaning")
    @classmethod
    def _meaning(cls, value: str) -> str:
        if not value.strip() or len(value) > MAX_MEANING or "\\" in value:
            raise ValueError(
                f"code meaning {value!r} must be 1 to {MAX_MEANING} characters without a backslash"
            )
        return value

    @model_validator(mode="after")
    def _code(self) -> Code:
        code = self.code
        if not code or len(code) > MAX_CODE or code != code.strip() or "\\" in code:
            raise ValueError(f"code value {code!r} must be 1 to {MAX_CODE} characters")
        if self.scheme == "SCT" and not (SCT_ID.match(code) and sct_check_digit_ok(code)):
            raise ValueError(
                f"{code!r} is not a SNOMED CT identifier (6 to 18 digits ending in their "
                "Verhoeff check digit); check the code"
            )
        return self

    def label(self) -> str:
        """``SCT 10200004 "Liver"``."""
        return f'{self.scheme} {self.code} "{self.meaning}"'


class SegmentConcept(BaseModel):
    """What a class is: its segmented property category and type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: Code
    type: Code

    def label(self) -> str:
        return f"{self.type.label()} in {self.category.label()}"


def _sct_keyword(keyword: str) -> dict[str, str]:
    """The SNOMED CT code pydicom's dictionary has under ``keyword``."""
    from pydicom.sr.codedict import codes  # its tables load only when a keyword is used

    try:
        found = getattr(codes.SCT, keyword)
    except AttributeError:
        import difflib

        close = difflib.get_close_matches(keyword, codes.SCT.dir(), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"{keyword!r} is no SNOMED CT keyword pydicom knows{hint} (or give "
            "{scheme, code, meaning})"
        ) from None
    return {"scheme": "SCT", "code": str(found.value), "meaning": str(found.meaning)}


DEFAULT_CONCEPT = SegmentConcept(
    category=Code(scheme="SCT", code="85756007", meaning="Tissue"),
    type=Code(scheme="SCT", code="85756007", meaning="Tissue"),
)
