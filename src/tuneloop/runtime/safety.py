"""What tuneloop refuses to trust: names and paths from users, pickle-based weights, secrets in logs.

- `safe_name(value, what)`: tenant, alias, tag and source names become path parts and object keys, so
  they are letters, digits, '.', '_' and '-' only, start with a letter or digit, at most 64 characters:
  no '/', no '..', nothing absolute.
- `inside(root, path)`: `path` resolved (symlinks followed) must stay under `root`; a symlink that
  leads out of a store is refused.
- `refuse_pickles(folder, what)`: a model or adapter folder with pickle-based weights (*.bin, *.pt, ...)
  is refused before anything loads it: unpickling can run arbitrary code. tuneloop loads safetensors only.
- `scrub(text)` / `install_log_redaction()`: secrets never reach a log line. The values of environment
  variables whose names say they hold a secret (…KEY, …TOKEN, …SECRET, …PASSWORD, at least 8
  characters), and anything shaped like a provider key (see `tuneloop.feedback.pii`), become
  `[REDACTED]` in every record of the loggers tuneloop and Prefect write to.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from tuneloop.errors import UnsafeFileError, UserError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.I)
MIN_SECRET_LEN = 8
REDACTED = "[REDACTED]"


def is_safe_name(value) -> bool:
    return isinstance(value, str) and bool(_NAME.fullmatch(value)) and ".." not in value


def safe_name(value: str, what: str = "name") -> str:
    """`value` if it is a safe name, else a UserError naming the rule and the fix."""
    if not is_safe_name(value):
        raise UserError(repr(value), f"is not a valid {what}: use 1-64 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit (no '/', no '..')",
                        f"rename it, e.g. {re.sub(r'[^A-Za-z0-9._-]+', '-', str(value)).strip('.-')[:64] or 'team-a'!r}")
    return value


def inside(root: str | Path, path: str | Path) -> Path:
    """`path` resolved, if it stays under `root` (resolved); otherwise UserError (a symlink or '..' out)."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise UserError(str(path), f"resolves to {path_r}, outside {root_r}",
                        "remove the symlink or '..' that leads out of the store")
    return path_r


def refuse_pickles(folder: str | Path, what: str | None = None) -> None:
    """Raise UnsafeFileError if `folder` (recursively) holds pickle-based weight files."""
    folder = Path(folder)
    if not folder.is_dir():
        return  # a hub id: transformers is told to load safetensors only (see basemodel.load_model)
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if found:
        raise UnsafeFileError(found, what or str(folder))


# -- secrets in logs ------------------------------------------------------------------------------

def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """The values of secret-named environment variables, longest first (so one inside another goes whole)."""
    env = os.environ if environ is None else environ
    vals = {v for k, v in env.items() if _SECRET_NAME.search(k) and v and len(v) >= MIN_SECRET_LEN}
    return sorted(vals, key=len, reverse=True)


def scrub(text: str, secrets: list[str] | None = None, placeholder: str = REDACTED) -> str:
    """`text` with secret values (default: `secret_values()`) and key-shaped tokens replaced by `placeholder`."""
    from tuneloop.feedback.pii import _KEY_RE as KEY_RE  # provider key shapes, one list for both

    if not text:
        return text
    for s in secret_values() if secrets is None else secrets:
        if s in text:
            text = text.replace(s, placeholder)
    return KEY_RE.sub(placeholder, text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with `scrub` (the formatted message, so secrets in args go too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string: let logging report it as usual
            return True
        clean = scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not getattr(record, "_tl_scrubbed", False):
            import traceback

            record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
            record._tl_scrubbed = True
        return True


_LOGGERS = ("", "tuneloop", "prefect", "prefect.flow_runs", "prefect.task_runs", "httpx", "uvicorn",
            "uvicorn.error", "uvicorn.access")
_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Add the redacting filter to tuneloop's and Prefect's loggers and to every handler they have
    (a logger's filter sees only records logged to it; a handler's sees the propagated ones too)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for h in logger.handlers:
            if _FILTER not in h.filters:
                h.addFilter(_FILTER)
