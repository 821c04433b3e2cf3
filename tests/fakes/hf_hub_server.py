"""A local stand-in for the Hugging Face Hub's write API, for `HfApi.create_repo` + `upload_folder`.

Speaks what huggingface_hub 2.x sends (see `hf_api.py` `create_repo`/`_validate_yaml` and
`_commit_api.py` `_fetch_upload_modes`/`_send_commit`):

- POST /api/repos/create                          {name, organization, type, visibility}; 409 if it exists
- POST /api/validate-yaml                         {content, repoType}: the README's YAML front matter
- POST /api/{type}s/{repo_id}/preupload/{rev}     {files: [{path, sample, size}]} -> every file "regular",
                                                  with the stored file's git oid so unchanged files are skipped
- POST /api/{type}s/{repo_id}/commit/{rev}        NDJSON: header, then file lines with base64 content
- GET  /api/{type}s/{repo_id}[/revision/{rev}]    repo info (sha, siblings), used after a no-op upload

Answering "regular" keeps the upload in the commit itself (no LFS or Xet storage to fake), which
the real Hub does for small files. Bearer auth with the configured token (401 otherwise);
`fail_next(n)` makes the next n requests answer 503. Anything else answers 404.

    with fake_hf_hub() as hub:
        HfApi(endpoint=hub.url, token=hub.token).create_repo("me/model")
        hub.repos["me/model"].files  # {path: bytes}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

import yaml

from fakes.base import Answer, FakeServer, json_answer

REPO_ROUTE = re.compile(r"^/api/(models|datasets|spaces)/(.+?)(?:/(preupload|commit|revision)/([^/]+))?$")


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    id: str
    type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)  # {oid, summary, paths}

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


class FakeHfHub(FakeServer):
    """In-memory Hub; `start()`/`stop()` or use `fake_hf_hub()`."""

    name = "fake-hf-hub"

    def __init__(self, token: str = "hf_fake_write_token", user: str = "tester"):
        super().__init__()
        self.token, self.user = token, user
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, auth or not
        self._fail = 0
        self._lock = threading.Lock()

    def fail_next(self, n: int = 1) -> None:
        self._fail = n

    # -- routes -------------------------------------------------------------

    def _create(self, body: dict) -> tuple[int, dict]:
        repo_id = f"{body.get('organization') or self.user}/{body['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        self.repos[repo_id] = Repo(repo_id, body.get("type") or "model", body.get("visibility") == "private")
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}

    def _validate_yaml(self, body: dict) -> tuple[int, dict]:
        content = body["content"]
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---")[1])
            except yaml.YAMLError as e:
                return 400, {"errors": [{"message": str(e)}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, repo: Repo, body: dict) -> tuple[int, dict]:
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_oid(repo.files[f["path"]]) if f["path"] in repo.files else None} for f in body["files"]]
        return 200, {"files": files, "commitOid": repo.sha}

    def _commit(self, repo: Repo, raw: bytes) -> tuple[int, dict]:
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return 400, {"error": "the first NDJSON line must be the header"}
        added = {}
        for item in lines[1:]:
            v = item["value"]
            if item["key"] == "file" and v.get("encoding") == "base64":
                added[v["path"]] = base64.b64decode(v["content"])
            elif item["key"] == "deletedFile":
                repo.files.pop(v["path"], None)
            else:  # lfsFile or anything else: this fake only ever asked for regular uploads
                return 400, {"error": f"fake hub does not accept {item['key']} operations"}
        repo.files.update(added)
        oid = hashlib.sha1(raw).hexdigest()
        repo.commits.append({"oid": oid, "summary": lines[0]["value"]["summary"], "paths": sorted(added)})
        return 200, {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{repo.id}/commit/{oid}",
                     "hookOutput": ""}

    def _info(self, repo: Repo) -> tuple[int, dict]:
        return 200, {"id": repo.id, "modelId": repo.id, "sha": repo.sha, "private": repo.private,
                     "siblings": [{"rfilename": p} for p in sorted(repo.files)]}

    def handle(self, method: str, path: str, auth: str | None, raw: bytes) -> tuple[int, dict, dict]:
        """(status, JSON body, extra headers)."""
        with self._lock:
            self.requests.append((method, path))
            if self._fail > 0:
                self._fail -= 1
                return 503, {"error": "Service Unavailable (fake)"}, {}
            if auth != f"Bearer {self.token}":
                return 401, {"error": "Invalid credentials in Authorization header"}, {}
            if method == "POST" and path == "/api/repos/create":
                return (*self._create(json.loads(raw)), {})
            if method == "POST" and path == "/api/validate-yaml":
                return (*self._validate_yaml(json.loads(raw)), {})
            m = REPO_ROUTE.match(path)
            if m:
                kind, repo_id, action = m.group(1), unquote(m.group(2)), m.group(3)
                repo = self.repos.get(repo_id)
                if repo is None or repo.type != kind[:-1]:
                    return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                if method == "POST" and action == "preupload":
                    return (*self._preupload(repo, json.loads(raw)), {})
                if method == "POST" and action == "commit":
                    return (*self._commit(repo, raw), {})
                if method == "GET" and action in (None, "revision"):
                    return (*self._info(repo), {})
            return 404, {"error": f"fake hub does not serve {method} {path}"}, {}

    def serve(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        status, body, extra = self.handle(method, urlparse(target).path, headers.get("authorization"), raw)
        return json_answer(status, body, extra)


def fake_hf_hub(token: str = "hf_fake_write_token") -> FakeHfHub:
    """A fake to run with `with`: started on 127.0.0.1 and a free port, stopped on exit."""
    return FakeHfHub(token)
