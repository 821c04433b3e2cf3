"""The registry's store on S3 (or any S3-compatible server) through boto3.

Conditional writes are S3's own: `put_object(IfNoneMatch="*")` creates only if absent and
`put_object(IfMatch=etag)` replaces only if unchanged; S3 answers 412 (or 409 when two conditional
writes race) and nothing is written. The endpoint is boto3's usual: the standard `AWS_ENDPOINT_URL`
(or `AWS_ENDPOINT_URL_S3`) environment variable, else AWS, unless `endpoint_url` is given.

Faults: every call has bounded retries with backoff (botocore's "standard" mode: 500/502/503/504, throttling,
timeouts and dropped connections are retried, with jittered exponential backoff) and connect / read
timeouts, set by `TUNELOOP_S3_MAX_ATTEMPTS` (total attempts per call, default 5),
`TUNELOOP_S3_CONNECT_TIMEOUT` (default 10 s) and `TUNELOOP_S3_READ_TIMEOUT` (default 60 s), or by the
constructor. When the attempts are spent the call raises `TransientError` naming the endpoint, the key, the
attempts and what to check.

A conditional PUT that was retried can be refused by its own first attempt: the first landed but its answer
was lost (a timeout, a dropped connection, a 5xx after the write), and the retry's If-None-Match / If-Match
no longer holds. `put` tells this apart from a lost race: when a conditional PUT took more than one attempt
and ends refused, it reads the key back, and if it holds exactly the bytes this call wrote, the write is
reported as done (with the stored ETag). So `ConflictError` always means "someone else's write won", which
is what `Registry._swap` (alias compare-and-swap), claims, the manifest's create-only write and the audit
log rely on.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tuneloop.errors import ConflictError, RegistryError, TransientError, UserError
from tuneloop.registry.store import CHUNK, LocalStore, check_key

_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict"}
_MISSING = {"NoSuchKey", "404", "NotFound"}

# name -> (environment variable, default, parse, rule); S3Store(...) arguments win over the environment
SETTINGS = {
    "max_attempts": ("TUNELOOP_S3_MAX_ATTEMPTS", 5, int, "a whole number of attempts per call, from 1 to 20"),
    "connect_timeout": ("TUNELOOP_S3_CONNECT_TIMEOUT", 10.0, float, "seconds, a number above 0 and at most 600"),
    "read_timeout": ("TUNELOOP_S3_READ_TIMEOUT", 60.0, float, "seconds, a number above 0 and at most 3600"),
}
_LIMITS = {"max_attempts": (1, 20), "connect_timeout": (0, 600), "read_timeout": (0, 3600)}


def client_settings(**given) -> dict:
    """max_attempts, connect_timeout and read_timeout: given ones, else the environment's, else the defaults;
    a value out of range raises UserError naming it."""
    out = {}
    for name, (env, default, parse, rule) in SETTINGS.items():
        value = given.get(name)
        source = f"{name}={value!r}"
        if value is None and os.environ.get(env, "").strip():
            value, source = os.environ[env].strip(), f"{env}={os.environ[env]!r}"
        if value is None:
            out[name] = default
            continue
        low, high = _LIMITS[name]
        try:
            parsed = parse(value)
            ok = (low <= parsed <= high) if name == "max_attempts" else (low < parsed <= high)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(source, f"{name} must be {rule}",
                            f"set {env} to a value like {default} (or unset it for the default {default})")
        out[name] = parsed
    return out


def parse_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not url.startswith("s3://") or not bucket:
        raise UserError(url, "an S3 registry is named s3://BUCKET or s3://BUCKET/PREFIX",
                        "write it like s3://models/tuneloop")
    return bucket, prefix.strip("/")


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client=None,
                 max_attempts: int | None = None, connect_timeout: float | None = None,
                 read_timeout: float | None = None):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        if client is None:
            self.settings = client_settings(max_attempts=max_attempts, connect_timeout=connect_timeout,
                                            read_timeout=read_timeout)
            config = Config(retries={"mode": "standard", "total_max_attempts": self.settings["max_attempts"]},
                            connect_timeout=self.settings["connect_timeout"],
                            read_timeout=self.settings["read_timeout"])
            client = boto3.client("s3", endpoint_url=endpoint_url, config=config)  # None: AWS_ENDPOINT_URL or AWS
        else:  # the caller's client, configured as the caller chose
            conf = client.meta.config
            retries = conf.retries or {}
            self.settings = {"max_attempts": retries.get("total_max_attempts") or (
                retries["max_attempts"] + 1 if "max_attempts" in retries else None),
                "connect_timeout": conf.connect_timeout, "read_timeout": conf.read_timeout}
        self.client = client
        self.endpoint = self.client.meta.endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # attempts (HTTP requests) of the current call, per thread: botocore retries inside one call
        self._calls = threading.local()
        self.client.meta.events.register("before-call.s3", self._call_starts)
        self.client.meta.events.register("before-send.s3", self._attempt_starts)

    def _call_starts(self, **kwargs) -> None:
        self._calls.attempts, self._calls.started = 0, time.monotonic()

    def _attempt_starts(self, **kwargs) -> None:
        self._calls.attempts = getattr(self._calls, "attempts", 0) + 1

    def _attempts(self) -> tuple[int, float]:
        """Attempts made by this thread's last call, and the seconds since it started."""
        now = time.monotonic()
        return getattr(self._calls, "attempts", 0), now - getattr(self._calls, "started", now)

    def _gave_up(self, what: str, where: str, problem: str) -> str:
        attempts, took = self._attempts()
        landed = (" A write whose answer was lost may still have landed; an object is stored whole or not at all."
                  if what in ("writing", "uploading", "deleting") else "")
        limits = (f"limits: TUNELOOP_S3_MAX_ATTEMPTS={self.settings['max_attempts']}, "
                  f"TUNELOOP_S3_CONNECT_TIMEOUT={self.settings['connect_timeout']} s, "
                  f"TUNELOOP_S3_READ_TIMEOUT={self.settings['read_timeout']} s")
        return (f"{what} {where} failed after {attempts} attempt{'s' if attempts != 1 else ''} over {took:.1f} s: "
                f"{problem}.{landed} This is usually temporary; retrying the operation is safe. Check that the "
                f"endpoint is up and reachable from this machine (`aws s3 ls s3://{self.bucket} --endpoint-url "
                f"{self.endpoint}`), the storage provider's status, and the network or proxy in between; for a "
                f"slow store raise the attempts or timeouts ({limits})")

    @classmethod
    def from_url(cls, url: str, **kwargs) -> S3Store:
        return cls(*parse_s3_url(url), **kwargs)

    def local_path(self, key: str) -> None:
        return None

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, what: str, key: str):
        """boto3's errors as tuneloop's: a lost precondition is a conflict, network trouble is transient,
        the rest names the bucket and what to check."""
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as BotoConnectionError,
                                         ConnectTimeoutError, EndpointConnectionError, HTTPClientError,
                                         NoCredentialsError, ReadTimeoutError)

        where = f"{self.url}/{key} (endpoint {self.endpoint})"
        try:
            yield
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _CONFLICT or status in (409, 412):
                raise ConflictError(f"{where} changed since it was read ({what} refused: {code})") from e
            if code == "NoSuchBucket":
                raise RegistryError(f"bucket {self.bucket!r} does not exist at {self.endpoint}. Fix: create it "
                                    f"(aws s3 mb s3://{self.bucket}) or point TUNELOOP_REGISTRY / --registry "
                                    "and AWS_ENDPOINT_URL at the right place") from e
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
                raise RegistryError(f"{what} {where} was refused ({code}). Fix: check the AWS credentials "
                                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and their "
                                    "permissions on the bucket") from e
            if code == "BadDigest":
                raise RegistryError(f"{where}: S3 received other bytes than were hashed; the source file changed "
                                    "while uploading. Fix: register the adapter again once it is written") from e
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling", "ServiceUnavailable"):
                raise TransientError(self._gave_up(what, where, f"the store answered {code} (HTTP {status})")) from e
            raise RegistryError(f"{what} {where} failed: {code}: {e.response.get('Error', {}).get('Message')}") from e
        except NoCredentialsError as e:
            raise RegistryError(f"no AWS credentials for {self.url}. Fix: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from e
        except ReadTimeoutError as e:
            raise TransientError(self._gave_up(what, where, f"no answer within the read timeout "
                                                            f"({self.settings['read_timeout']} s)")) from e
        except (EndpointConnectionError, ConnectTimeoutError) as e:
            raise TransientError(self._gave_up(what, where, f"cannot reach S3 at {self.endpoint} ({e})")) from e
        except (BotoConnectionError, HTTPClientError) as e:
            raise TransientError(self._gave_up(what, where, f"the connection to {self.endpoint} failed or was "
                                                            f"dropped before an answer ({e})")) from e
        except BotoCoreError as e:
            raise RegistryError(f"{what} {where} failed: {e}") from e

    def _get_object(self, key: str):
        """get_object's answer, or None when the key is absent (the caller wraps it in `_errors`)."""
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in _MISSING:
                return None
            raise

    def get(self, key: str) -> tuple[bytes, str] | None:
        with self._errors("reading", key):
            r = self._get_object(key)
            return None if r is None else (r["Body"].read(), r["ETag"])

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        from botocore.exceptions import ClientError

        kwargs: dict = {}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        with self._errors("writing", key):
            try:
                r = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **kwargs)
            except ClientError as e:
                code = str(e.response.get("Error", {}).get("Code"))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if kwargs and self._attempts()[0] > 1 and (code in _CONFLICT or status in (409, 412)):
                    # retried and refused: maybe by this call's own earlier attempt, which landed unanswered
                    mine = self._get_object(key)
                    if mine is not None and mine["Body"].read() == data:
                        return mine["ETag"]
                # IfMatch on a key that vanished answers 404: the precondition failed all the same
                if if_match is not None and code in _MISSING:
                    raise ConflictError(f"{self.url}/{key} was deleted since it was read (compare-and-swap "
                                        "refused)") from e
                raise
            return r["ETag"]

    def put_file(self, key: str, src: str | Path) -> str:
        """One PUT (up to 5 GiB) with the sha256 sent along: S3 refuses the upload (BadDigest) if the bytes it
        receives differ from the bytes hashed, so the digest returned is the digest of what was stored."""
        h = hashlib.sha256()
        with open(src, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                h.update(chunk)
            fh.seek(0)
            with self._errors("uploading", key):
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=fh,
                                       ChecksumSHA256=base64.b64encode(h.digest()).decode())
        return h.hexdigest()

    def get_file(self, key: str, dest: str | Path) -> str | None:
        h = hashlib.sha256()
        with self._errors("downloading", key):
            r = self._get_object(key)
            if r is None:
                return None

            def write(fh) -> None:
                for chunk in r["Body"].iter_chunks(CHUNK):
                    h.update(chunk)
                    fh.write(chunk)

            LocalStore._replace(Path(dest), write)
        return h.hexdigest()

    def sha256(self, key: str) -> str | None:
        h = hashlib.sha256()
        with self._errors("reading", key):
            r = self._get_object(key)
            if r is None:
                return None
            for chunk in r["Body"].iter_chunks(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def list(self, prefix: str = "") -> list[str]:
        full = (f"{self.prefix}/{prefix}" if self.prefix else prefix) if prefix else (
            f"{self.prefix}/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        with self._errors("listing", prefix or "/"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][cut:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._errors("deleting", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
