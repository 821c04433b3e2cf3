"""`tuneloop keys create`: the key alone on stdout (so `KEY=$(...)` and `| head -1` take it whole), the note on
stderr; a closed stdout stores no key and says so, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tuneloop.cli.main import main
from tuneloop.serving.keys import hash_key


def _create(home) -> list[str]:
    return [sys.executable, "-m", "tuneloop.cli.main", "keys", "create", "--tenant", "acme", "--home", str(home)]


def test_the_key_is_alone_on_stdout_and_stored(tmp_path, capsys):
    assert main(["keys", "create", "--tenant", "acme", "--role", "admin", "--home", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    key = out.removesuffix("\n")
    assert key.startswith("tl-") and "\n" not in key
    assert "admin key of tenant acme" in err and "cannot be shown again" in err and key not in err
    (entry,) = yaml.safe_load((tmp_path / "keys.yaml").read_text())["keys"]
    assert entry == {"sha256": hash_key(key), "tenant": "acme", "role": "admin", "name": "acme-admin-1"}


@pytest.mark.server  # runs the CLI in a process of its own
def test_piped_to_head_it_gives_the_key_and_no_traceback(tmp_path):
    run = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" | head -1', "bash", *_create(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("tl-") and run.stdout.count("\n") == 1
    assert "Traceback" not in run.stderr and "cannot be shown again" in run.stderr
    (entry,) = yaml.safe_load((tmp_path / "keys.yaml").read_text())["keys"]
    assert entry["sha256"] == hash_key(run.stdout.strip())


@pytest.mark.server  # runs the CLI in a process of its own
@pytest.mark.parametrize("stdout", ["closed pipe", "closed"])
def test_a_closed_stdout_stores_no_key_and_says_so(tmp_path, stdout):
    if stdout == "closed pipe":  # its reader gone before the key is written (`| true`)
        read, write = os.pipe()
        os.close(read)
        with os.fdopen(write, "wb") as fh:
            run = subprocess.run(_create(tmp_path), stdout=fh, stderr=subprocess.PIPE, text=True, timeout=120)
    else:  # started with no stdout at all (`>&-`)
        run = subprocess.run(["bash", "-c", '"$@" >&-', "bash", *_create(tmp_path)], stderr=subprocess.PIPE,
                             text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr
    assert "error: stdout: it was closed before the key could be written, so no key was stored" in run.stderr
    assert "Fix:" in run.stderr
    assert not (tmp_path / "keys.yaml").exists()
