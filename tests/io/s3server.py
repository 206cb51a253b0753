"""A real S3-compatible server on loopback for the tests: moto's server in a subprocess.

It enforces credentials (``INITIAL_NO_AUTH_ACTION_COUNT``: only the three IAM calls
that create the test user and its key go unsigned), so wrong credentials fail as
they would against real object storage.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    url: str
    key_id: str
    secret: str

    @property
    def env(self) -> dict[str, str]:
        """The environment a client of this server needs (and nothing else of AWS)."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def process_env(self, **extra: str) -> dict[str, str]:
        """os.environ without other AWS settings, plus this server's, plus ``extra``."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GDAL_"))}
        return {**base, **self.env, **extra}

    def new_bucket(self) -> str:
        import s3fs

        name = f"segflow-{uuid.uuid4().hex[:12]}"
        fs = s3fs.S3FileSystem(
            key=self.key_id, secret=self.secret, endpoint_url=self.url, skip_instance_cache=True
        )
        fs.mkdir(name)
        return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("moto_server exited at start")
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start in 30 s")


def _make_user(url: str) -> tuple[str, str]:
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="segflow")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="segflow", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="segflow")["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


@contextmanager
def s3_server(*, enforce_credentials: bool = True) -> Iterator[S3Server]:
    """Start the server; without ``enforce_credentials`` any key is accepted (and requests
    skip moto's IAM policy evaluation, which costs it ~20 ms each)."""
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3" if enforce_credentials else "inf"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, process)
        key_id, secret = _make_user(url) if enforce_credentials else ("bench", "bench-secret")
        yield S3Server(url, key_id, secret)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
