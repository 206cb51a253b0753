"""URIs beside paths: path arithmetic on object keys, GDAL settings, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from segflow.io.uris import ObjectPath, as_location, gdal_options, is_uri, redact


def test_object_paths_do_what_pathlib_does_on_keys():
    p = ObjectPath("S3://bucket/scenes/a.tif/")
    assert str(p) == "s3://bucket/scenes/a.tif"
    assert (p.bucket, p.key, p.name, p.stem, p.suffix) == (
        "bucket",
        "bucket/scenes/a.tif",
        "a.tif",
        "a",
        ".tif",
    )
    assert str(p.parent) == "s3://bucket/scenes"
    assert str(p.parent / "b.zarr") == "s3://bucket/scenes/b.zarr"
    assert str(p.with_name(".a.tif.lock")) == "s3://bucket/scenes/.a.tif.lock"
    assert p.resolve() is p and p.absolute() is p


def test_as_location_keeps_uris_and_paths_apart():
    assert as_location("s3://b/k.tif") == ObjectPath("s3://b/k.tif")
    assert as_location("file:///tmp/x.tif") == Path("/tmp/x.tif")
    assert as_location("~/x.tif") == Path("~/x.tif").expanduser()
    assert is_uri("gs://b/k") and is_uri("https://host/k.tif")
    assert not is_uri("/tmp/x") and not is_uri("file:///tmp/x") and not is_uri(Path("/tmp"))
    with pytest.raises(ValueError, match="ftp"):
        ObjectPath("ftp://host/x")


def test_gdal_gets_the_endpoint_of_an_s3_compatible_server(monkeypatch):
    monkeypatch.delenv("AWS_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    options = gdal_options()
    assert options["AWS_S3_ENDPOINT"] == "127.0.0.1:9000"
    assert options["AWS_HTTPS"] == "NO" and options["AWS_VIRTUAL_HOSTING"] == "FALSE"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.org")
    assert gdal_options()["AWS_HTTPS"] == "YES"
    monkeypatch.setenv("AWS_S3_ENDPOINT", "mine:1")  # the user's own GDAL setting wins
    assert "AWS_S3_ENDPOINT" not in gdal_options()


def test_redact_removes_secrets_from_text(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    text = redact(
        "failed s3cr3t-value https://user:pw@host/x?X-Amz-Signature=abcd&part=1 https://h/k?sig=zzz"
    )
    assert "s3cr3t" not in text and "user:pw" not in text and "abcd" not in text
    assert "zzz" not in text and "part=1" in text
