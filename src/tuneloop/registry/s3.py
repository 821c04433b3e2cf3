"""The registry's store on S3 (or any S3-compatible server) through boto3.

Conditional writes are S3's own: `put_object(IfNoneMatch="*")` creates only if absent and
`put_object(IfMatch=etag)` replaces only if unchanged; S3 answers 412 (or 409 when two conditional
writes race) and nothing is written. The endpoint is boto3's usual: the standard `AWS_ENDPOINT_URL`
(or `AWS_ENDPOINT_URL_S3`) environment variable, else AWS, unless `endpoint_url` is given.
"""

from __future__ import annotations

import base64
import hashlib
from contextlib import contextmanager
from pathlib import Path

from tuneloop.errors import ConflictError, RegistryError, TransientError
from tuneloop.registry.store import CHUNK, LocalStore, check_key

_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    from tuneloop.errors import UserError

    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not url.startswith("s3://") or not bucket:
        raise UserError(url, "an S3 registry is named s3://BUCKET or s3://BUCKET/PREFIX",
                        "write it like s3://models/tuneloop")
    return bucket, prefix.strip("/")


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client=None):
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)  # None: AWS_ENDPOINT_URL or AWS
        self.endpoint = self.client.meta.endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

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
                                         HTTPClientError, NoCredentialsError)

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
                raise TransientError(f"{what} {where} failed: {code} ({status})") from e
            raise RegistryError(f"{what} {where} failed: {code}: {e.response.get('Error', {}).get('Message')}") from e
        except NoCredentialsError as e:
            raise RegistryError(f"no AWS credentials for {self.url}. Fix: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from e
        except (BotoConnectionError, HTTPClientError) as e:
            raise TransientError(f"cannot reach S3 at {self.endpoint} for {what} {where}: {e}") from e
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
                # IfMatch on a key that vanished answers 404: the precondition failed all the same
                if if_match is not None and str(e.response.get("Error", {}).get("Code")) in _MISSING:
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
