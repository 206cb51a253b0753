"""Coded concepts: checked once at the edge, with SNOMED CT check digits and keywords."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydicom.sr.codedict import codes

from segflow.io.concepts import DEFAULT_CONCEPT, Code, SegmentConcept, sct_check_digit_ok


def test_verhoeff_check_digit_against_pydicoms_snomed_dictionary():
    # every code of a few DICOM context groups is a valid identifier; one digit off is not
    for keyword in ("Liver", "Tissue", "AnatomicalStructure", "Neoplasm", "Kidney", "Spleen"):
        value = str(getattr(codes.SCT, keyword).value)
        assert sct_check_digit_ok(value), keyword
        wrong = value[:-1] + str((int(value[-1]) + 1) % 10)
        assert not sct_check_digit_ok(wrong), keyword


def test_a_keyword_fills_in_code_and_meaning():
    assert Code.model_validate("Liver") == Code(scheme="SCT", code="10200004", meaning="Liver")
    concept = SegmentConcept.model_validate({"category": "AnatomicalStructure", "type": "Spleen"})
    assert concept.category.code == "91723000" and concept.type.meaning == "Spleen"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("Livr", "did you mean 'Liver'"),
        ({"scheme": "SCT", "code": "10200005", "meaning": "Liver"}, "Verhoeff check digit"),
        ({"scheme": "SCT", "code": "liver", "meaning": "Liver"}, "not a SNOMED CT identifier"),
        ({"scheme": "snomed", "code": "10200004", "meaning": "Liver"}, "not a DICOM designator"),
        ({"scheme": "SCT", "code": "10200004", "meaning": ""}, "1 to 64 characters"),
        ({"scheme": "SCT", "code": "10200004", "meaning": "x" * 65}, "1 to 64 characters"),
        ({"scheme": "99LOCAL", "code": "A" * 17, "meaning": "Liver"}, "1 to 16 characters"),
        ({"scheme": "SCT", "code": "10200004"}, "Field required"),
        ({"scheme": "SCT", "code": "10200004", "meaning": "Liver", "x": 1}, "Extra inputs"),
    ],
)
def test_bad_codes_are_refused(data, message):
    with pytest.raises(ValidationError, match=message):
        Code.model_validate(data)


def test_other_schemes_take_any_short_code():
    code = Code(scheme="99SEGFLOW", code="LIV-01", meaning="Liver, segflow local")
    assert code.label() == '99SEGFLOW LIV-01 "Liver, segflow local"'


def test_a_concept_needs_category_and_type():
    with pytest.raises(ValidationError, match="category"):
        SegmentConcept.model_validate({"type": "Liver"})
    assert DEFAULT_CONCEPT.type.meaning == "Tissue"
