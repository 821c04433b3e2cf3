"""One error hierarchy for tuneloop.

Only `TransientError` is retried (by the task decorators). A `UserError`
names the offending value, the rule it broke and the fix, and is raised
before anything is written.
"""

from __future__ import annotations


class TuneloopError(Exception):
    """Base of every error tuneloop raises on purpose."""


class UserError(TuneloopError):
    """Bad input from the operator: config, data, arguments."""

    def __init__(self, value: object, rule: str, fix: str):
        self.value, self.rule, self.fix = value, rule, fix
        super().__init__(f"{value}: {rule}. Fix: {fix}")


class SpecError(UserError):
    """A flow or CLI spec that does not validate."""


def listed(issues: list, shown: int = 20) -> str:
    """The first `shown` issues, one indented line each, then how many more: a message stays readable."""
    more = f"\n  ... and {len(issues) - shown} more" if len(issues) > shown else ""
    return "\n".join(f"  {i}" for i in issues[:shown]) + more


class DataValidationError(UserError):
    """A dataset broke one or more data rules; `issues` lists each by line."""

    def __init__(self, source: object, issues: list, report_path: object | None = None):
        self.issues = issues
        self.report_path = report_path
        where = f" (full report: {report_path})" if report_path else ""
        super().__init__(
            source,
            f"{len(issues)} data problem(s){where}:\n" + listed(issues),
            "correct the rows listed above and run `tuneloop data validate FILE` again",
        )


class RegistryError(TuneloopError):
    """The registry is missing something it should hold, or a write conflicted."""


class NotFoundError(RegistryError, UserError):
    """A version or alias the operator named does not exist."""

    def __init__(self, ref: str, known: list[str]):
        shown = ", ".join(known[-10:]) or "none yet"
        UserError.__init__(
            self, repr(ref), "is not a version id or alias in this registry",
            f"use one of: {shown} (see `tuneloop registry list`)",
        )


class ConflictError(RegistryError):
    """A conditional write lost a race: what it read changed before it wrote. Nothing was written;
    re-read and decide again (never retried blindly, since the decision was made on stale state)."""


class ChecksumError(RegistryError):
    """A registered file's bytes no longer match the sha256 in the version's manifest."""

    def __init__(self, version: str, file: str, expected: str | None, actual: str | None, where: str):
        self.version, self.file, self.expected, self.actual = version, file, expected, actual
        want = f"sha256 {expected}" if expected else "no such file (it is not in the manifest)"
        got = f"sha256 {actual}" if actual else "no such file"
        super().__init__(
            f"{file} of version {version} in {where} fails its checksum: expected {want}, found {got}. "
            f"Refusing to load it. Fix: the file was changed, removed or added after registration; restore the "
            f"original adapter files, or retrain and register a new version "
            f"(`tuneloop registry show {version}` lists every file that differs)")


class RefusedError(RegistryError, UserError):
    """A registry change the operator asked for that breaks a rule (deleting an aliased version, ...)."""


class UnsafeFileError(RefusedError):
    """An adapter holds a pickle-based weight file, which can run code when loaded."""

    def __init__(self, files: list[str], where: str):
        self.files = files
        UserError.__init__(
            self, f"{where}: {', '.join(files)}",
            "the registry holds safetensors adapters only; pickle-based weight files (*.bin, *.pt, *.pth, "
            "*.pkl, *.ckpt) can run arbitrary code when loaded",
            "save the adapter with `model.save_pretrained(folder, safe_serialization=True)` (the default) "
            "and remove the pickle files, or convert them with safetensors' `save_file`")


class TransientError(TuneloopError):
    """Network failures, 5xx answers, timeouts: safe to retry."""
