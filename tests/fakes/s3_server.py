"""A real S3 API for tests: moto's server in a subprocess (`python -m moto.server`), offline.

It honours put_object's IfNoneMatch="*" and IfMatch=etag (412 PreconditionFailed), which is what the
registry's conditional writes need. It does not verify a ChecksumSHA256 sent with a PUT (real S3 does).

    with moto_s3_server() as endpoint:   # http://127.0.0.1:<port>
        boto3.client("s3", endpoint_url=endpoint, ...)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fakes.base import free_port


@contextmanager
def moto_s3_server(timeout: float = 60.0) -> Iterator[str]:
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="moto-")) / "moto.log"
    with open(log, "wb") as fh:  # a file, not a pipe: moto logs every request and a full pipe would stall it
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not answer on {endpoint} within {timeout} s")
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()  # by PID
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
