"""Specs and sidecars are parsed without alias expansion and within a size limit."""

from __future__ import annotations

import pytest

from segflow.errors import ConfigError
from segflow.io.documents import DocumentError, parse_yaml, read_document
from segflow.spec import load_spec

BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
)


def test_an_alias_bomb_is_refused_before_it_expands():
    with pytest.raises(DocumentError, match="anchors and aliases are not accepted"):
        parse_yaml(BILLION_LAUGHS)


def test_plain_yaml_and_json_still_read(tmp_path):
    (tmp_path / "a.yaml").write_text("tiling: {patch_size: [96, 96]}\nname: x\n")
    (tmp_path / "a.json").write_text('{"name": "x"}')
    assert read_document(tmp_path / "a.yaml") == {"tiling": {"patch_size": [96, 96]}, "name": "x"}
    assert read_document(tmp_path / "a.json") == {"name": "x"}


def test_python_tags_are_refused():
    with pytest.raises(DocumentError, match="not valid YAML"):
        parse_yaml("!!python/object/apply:os.system ['echo pwned']")


def test_a_spec_with_aliases_is_one_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("tiling: &t {overlap: 0.5}\ninput: *t\n")
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert "anchors and aliases" in str(info.value) and str(path) in str(info.value)


def test_a_sidecar_with_an_alias_bomb_is_a_model_error(tmp_path):
    from segflow.errors import ModelError
    from segflow.models.exported import read_sidecar

    path = tmp_path / "m.pt.yaml"
    path.write_text(BILLION_LAUGHS.replace("a: &a", "provenance: &a", 1))
    with pytest.raises(ModelError, match="anchors and aliases"):
        read_sidecar(path)


def test_oversized_and_binary_documents_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * ((1 << 20) + 10))
    with pytest.raises(DocumentError, match="larger than"):
        read_document(big)
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DocumentError, match="not UTF-8"):
        read_document(binary)
