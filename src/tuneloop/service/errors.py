"""The service's refusals. Each is a UserError (value, rule, fix), so the HTTP layer answers it with its
message; the subclasses let it pick the status (404, 413, 400) without parsing text."""

from __future__ import annotations

from tuneloop.errors import UserError, listed


class NotFound(UserError):
    """An id this tenant has no such object for. Another tenant's id reads exactly like an unknown one,
    so an answer never tells whether an id exists elsewhere."""

    http_status = 404

    def __init__(self, ident: object, kind: str, listing: str, param: str | None = None):
        self.kind, self.param = kind, param
        self.code = "model_not_found" if kind == "model" else None  # OpenAI's code for an unknown model
        super().__init__(repr(ident)[:80], f"no such {kind} for this key's tenant",
                         f"use an id that {listing} lists for this key")


class FileRejected(UserError):
    """An upload that broke data rules, with every problem by line (`issues`); none of it was kept."""

    def __init__(self, filename: str, issues: list):
        self.issues = issues
        super().__init__(repr(filename), f"was rejected: {len(issues)} data problem(s):\n{listed(issues)}\n",
                         "correct the lines listed and upload the file again (nothing of this upload was kept)")


class TooLarge(UserError):
    """An upload over the store's size limit, refused before anything is written."""

    http_status = 413
