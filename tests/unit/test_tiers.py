"""The test tiers (tests/conftest.py): what makes a test slow is marked by rule, and a fast test that trains,
starts Prefect, a server or a process fails at once, naming the mark it needs."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from conftest import TIER_FIXTURES, TierError


def test_every_test_using_a_tier_fixture_or_mark_is_slow(request):
    """Holds for every test this session runs, whatever `-m` selected."""
    for item in request.session.items:
        for mark, fixtures in TIER_FIXTURES.items():
            if any(f in item.fixturenames for f in fixtures):
                assert item.get_closest_marker(mark), f"{item.nodeid} uses a {mark} fixture but is not marked {mark}"
            if item.get_closest_marker(mark):
                assert item.get_closest_marker("slow"), f"{item.nodeid} is marked {mark} but not slow"


def test_a_fast_test_cannot_listen_on_a_socket():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises(TierError, match=r"test_tiers.py::\S+ starts a server.*add @pytest.mark.server"):
            s.listen()


def test_a_fast_test_cannot_start_a_process():
    with pytest.raises(TierError, match=r"starts a process \(.*python.*-c pass\).*@pytest.mark.server"):
        subprocess.run([sys.executable, "-c", "pass"])
    with pytest.raises(TierError, match=r"prefect server start.*@pytest.mark.prefect"):
        subprocess.run(["prefect", "server", "start"])


def test_a_fast_test_cannot_train_or_build_the_tiny_base(tmp_path, monkeypatch):
    import tuneloop.training.loop as loop
    from tuneloop.models.base import resolve_base_model
    from tuneloop.specs import TINY_BASE, TrainingSpec
    from tuneloop.training.loop import build_lora_model, train_lora

    with pytest.raises(TierError, match="builds the tiny base model.*@pytest.mark.model"):
        resolve_base_model(TINY_BASE, tmp_path / "models", log=lambda m: None)
    with pytest.raises(TierError, match="trains a LoRA adapter.*@pytest.mark.model"):
        build_lora_model("unused", TrainingSpec())
    monkeypatch.setattr(loop, "load_tokenizer", lambda path: None)  # train_lora loads it before the model
    with pytest.raises(TierError, match="trains a LoRA adapter"):
        train_lora(TrainingSpec(), "unused", [], [], tmp_path / "run", log=lambda m: None)


@pytest.mark.server
def test_a_slow_test_may_start_a_process():
    assert subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True).stdout == "ok\n"
