"""One writer per store in object storage: a lease taken with a conditional put."""

from __future__ import annotations

import json
import time

import pytest
import s3fs

from segflow.errors import OutputError
from segflow.io.lease import lease_path, writer_lock
from segflow.io.uris import ObjectPath


def _fs(server) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        key=server.key_id, secret=server.secret, endpoint_url=server.url, skip_instance_cache=True
    )


def test_a_second_writer_is_refused_while_the_first_holds_the_lease(s3):
    store = ObjectPath(f"s3://{s3.new_bucket()}/out/a.zarr")
    fs = _fs(s3)
    with writer_lock(store):
        held = json.loads(fs.cat_file(lease_path(store).key))
        assert held["holder"].startswith("pid ")
        refused = pytest.raises(OutputError, match="being written by another run")
        with refused as caught, writer_lock(store):
            pass
        assert "\n" not in str(caught.value)
    fs.invalidate_cache()
    assert not fs.exists(lease_path(store).key)  # given back at the end
    with writer_lock(store):  # and free again
        pass


def test_an_expired_lease_of_a_killed_run_is_taken_over(s3, monkeypatch):
    monkeypatch.setenv("SEGFLOW_LEASE_SECONDS", "1")
    store = ObjectPath(f"s3://{s3.new_bucket()}/a.zarr")
    stale = {"holder": "pid 1 on gone", "expires": time.time() - 1}
    _fs(s3).pipe_file(lease_path(store).key, json.dumps(stale).encode())
    with writer_lock(store):
        held = json.loads(_fs(s3).cat_file(lease_path(store).key))
        assert held["holder"] != "pid 1 on gone"


def test_a_missing_bucket_is_one_line(s3):
    store = ObjectPath("s3://no-such-bucket-segflow/a.zarr")
    with pytest.raises(OutputError, match="no-such-bucket-segflow"), writer_lock(store):
        pass
