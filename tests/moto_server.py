"""A real AWS Secrets Manager endpoint on loopback: ``moto``'s server mode (``moto_server``), a Flask
app speaking the AWS wire protocol, in a process of its own on a free port. Tests create and change
secrets through it with boto3, and the gateway reads them over HTTP as it would from AWS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.gateway_proc import free_port

REGION = "eu-west-1"
# moto accepts any credentials; these keep every AWS client off the machine's own profile and IMDS.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIATESTGATEWAY0001",
    "AWS_SECRET_ACCESS_KEY": "aws-test-secret-key-0123456789abcdef",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class MotoServer:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (folder / "moto.log").open("wb")
        binary = Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto_server did not start: {(folder / 'moto.log').read_text()}"
                    ) from None
                time.sleep(0.05)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "secretsmanager",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()
