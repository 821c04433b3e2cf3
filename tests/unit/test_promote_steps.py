"""The promote flow's pure parts: its stages, the watch over a stage, and the outcome built from the steps."""

from __future__ import annotations

from tuneloop.serving.outcome import promotion_outcome
from tuneloop.serving.rollout import Check
from tuneloop.serving.stages import already_live, breach_of, stages, watch
from tuneloop.specs import PromoteSpec


def spec(**kw) -> PromoteSpec:
    return PromoteSpec(server="http://127.0.0.1:1", version="v2", **kw)


def test_blue_green_is_one_switch_and_canary_walks_its_steps_first():
    assert [(s.label, s.weight) for s in stages(spec(watch_seconds=3))] == [("after switch", None)]
    canary = stages(spec(mode="canary", canary_steps=[0.1, 0.5, 1.0], step_seconds=2, watch_seconds=3))
    assert [(s.label, s.weight, s.seconds) for s in canary] == [
        ("canary 10%", 0.1, 2), ("canary 50%", 0.5, 2), ("after switch", None, 3)]


def test_the_watch_probes_until_its_end_and_stops_at_the_first_breach():
    now = [100.0]

    def sleep(s):
        now[0] += s

    seen = []

    def probe(at):
        seen.append(at)
        return Check(ok=len(seen) != 3, reasons=["error rate 0.5 > 0.05"], at=at)

    checks = watch(probe, since=100.0, seconds=30, label="after switch", sleep=sleep, clock=lambda: now[0])
    assert seen == ["after switch check 1", "after switch check 2", "after switch check 3"] and now[0] == 115
    assert breach_of(stages(spec())[0], checks) == "after switch: error rate 0.5 > 0.05"
    calm = watch(lambda at: Check(ok=True, at=at), since=100.0, seconds=12, label="x", sleep=sleep,
                 clock=lambda: now[0])
    assert len(calm) == 1 and breach_of(stages(spec())[0], calm) is None  # the clock was already past its end


def test_the_outcome_names_what_happened_and_keeps_the_result_shape():
    status = {"live": "blue", "canary": None, "slots": {"blue": {"version": "v2"}, "green": {"version": None}}}
    assert already_live(status, "v2") and not already_live(status | {"canary": {"slot": "green"}}, "v2")
    ok, bad = Check(ok=True, at="validation"), Check(ok=False, reasons=["smoke accuracy 0.2 < 0.7"], at="validation")
    live = promotion_outcome(spec(), "v2", status, "v1", "v2", None, [], None).to_json()
    assert list(live) == ["version", "mode", "alias", "alias_before", "checks", "outcome", "reason", "alias_after"]
    assert live["outcome"] == "already-live" and live["reason"] == "v2 is already live in blue; production: v1 -> v2"
    rejected = promotion_outcome(spec(), "v2", status, "v1", "v1", "green", [bad], None).to_json()
    assert rejected["slot"] == "green" and rejected["reason"] == "validation failed: smoke accuracy 0.2 < 0.7"
    assert rejected["checks"] == [bad.to_json()]
    back = promotion_outcome(spec(), "v2", status, "v1", "v1", "green", [ok, bad], "after switch: x")
    assert (back.outcome, back.reason) == ("rolled-back", "after switch: x")
    done = promotion_outcome(spec(), "v2", status, None, "v2", "green", [ok, ok], None)
    assert (done.outcome, done.reason) == ("promoted", "v2 is live in green; production: None -> v2")
