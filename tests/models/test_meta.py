"""ModelMeta's coded concepts: keyed by class name, checked against the classes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from segflow.errors import ModelError
from segflow.models.exported import read_sidecar, write_sidecar
from segflow.models.meta import ClassInfo, ModelMeta

CLASSES = tuple(ClassInfo(name=n) for n in ("background", "liver", "spleen"))


def _meta(concepts: object) -> ModelMeta:
    return ModelMeta.model_validate(
        {
            "arch": "pixel",
            "in_channels": 1,
            "spatial_dims": 3,
            "classes": [c.model_dump() for c in CLASSES],
            "concepts": concepts,
        }
    )


def test_concepts_by_class_name():
    meta = _meta({"liver": {"category": "AnatomicalStructure", "type": "Liver"}})
    assert meta.concept_of("liver") is not None
    assert meta.concept_of("liver").type.code == "10200004"  # type: ignore[union-attr]
    assert meta.concept_of("spleen") is None
    assert meta.describe_concepts() == [
        ("concept liver", 'SCT 10200004 "Liver" in SCT 91723000 "Anatomical Structure"')
    ]
    assert _meta(None).describe_concepts() == []


@pytest.mark.parametrize(
    ("concepts", "message"),
    [
        ({"livr": {"category": "AnatomicalStructure", "type": "Liver"}}, "did you mean 'liver'"),
        ({"background": {"category": "Tissue", "type": "Tissue"}}, "class 0, the background"),
        ({"liver": {"category": "AnatomicalStructure", "type": "Livr"}}, "did you mean 'Liver'"),
    ],
)
def test_bad_concepts_are_refused(concepts, message):
    with pytest.raises(ValidationError, match=message):
        _meta(concepts)


def test_sidecars_carry_concepts(tmp_path: Path):
    meta = _meta({"spleen": {"category": "AnatomicalStructure", "type": "Spleen"}})
    for name in ("m.yaml", "m.json"):
        assert read_sidecar(write_sidecar(meta, tmp_path / name)) == meta


def test_a_sidecar_with_a_wrong_code_is_one_line(tmp_path: Path):
    sidecar = tmp_path / "m.yaml"
    sidecar.write_text(
        "arch: pixel\nin_channels: 1\nspatial_dims: 3\n"
        "classes: [{name: background}, {name: liver}]\n"
        "concepts:\n  liver:\n    category: AnatomicalStructure\n"
        "    type: {scheme: SCT, code: '10200005', meaning: Liver}\n"
    )
    with pytest.raises(ModelError, match=r"concepts\.liver\.type.*Verhoeff") as info:
        read_sidecar(sidecar)
    assert "\n" not in str(info.value)
