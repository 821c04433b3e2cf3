"""The worker images build from this tree: every path a Dockerfile copies exists (the flows moved under
src/tuneloop/ once and the images' COPY lines were left naming the old folders)."""

from __future__ import annotations

import pytest

from conftest import ROOT

DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists(dockerfile):
    sources = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "COPY" and not any(p.startswith("--from") for p in parts):
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    assert sources, f"{dockerfile.name} copies nothing"
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"{dockerfile.name} copies {missing}, which this tree does not have"
