"""A promotion's request, its key, and how its flow run's end reads (service.promotions)."""

from __future__ import annotations

import pytest

from tuneloop.service import promotions as P
from tuneloop.serving.bodies import BadField


def test_a_request_becomes_a_promote_spec_aimed_at_the_service():
    spec = P.parse({"mode": "canary", "canary_steps": [0.5, 1.0], "watch_seconds": 2}, "http://127.0.0.1:8000",
                   "v3", "/data/smoke.jsonl")
    assert (spec.server, spec.version, spec.alias, spec.mode) == ("http://127.0.0.1:8000", "v3", "production",
                                                                  "canary")
    assert spec.canary_steps == [0.5, 1.0] and spec.watch_seconds == 2 and spec.smoke == "/data/smoke.jsonl"
    assert P.parse({}, "http://x", "v1", None).mode == "blue-green"


@pytest.mark.parametrize("body, field", [({"mode": "sideways"}, "mode"), ({"server": "http://elsewhere"}, "server"),
                                          ({"canary_steps": [0.5, 0.2]}, "canary_steps"),
                                          ({"min_accuracy": 2}, "min_accuracy"), ({"version": "v9"}, "version")])
def test_a_bad_field_is_refused_by_name(body, field):
    with pytest.raises(BadField) as e:
        P.parse(body, "http://x", "v1", None)
    assert e.value.param == field


def test_a_promotions_key_is_an_admin_key_of_its_tenant_until_it_is_dropped():
    tokens = P.Tokens()
    token = tokens.make("acme", "promo-1")
    key = tokens.find(token)
    assert key.tenant == "acme" and key.can("admin") and key.name == "promo-1"
    assert tokens.find(token + "x") is None
    tokens.drop("promo-1")
    assert tokens.find(token) is None


def test_the_flows_outcome_is_the_promotions_status_and_a_crash_is_not_an_end():
    done = P.ended({}, "COMPLETED", None, {"outcome": "rolled-back", "reason": "canary 10%: error rate", "checks": []})
    assert done["status"] == "rolled-back" and "error rate" in done["reason"]
    assert P.ended({}, "COMPLETED", None, None)["status"] == "failed"  # no readable outcome is said so
    assert P.ended({}, "FAILED", "boom", None) == {"status": "failed", "reason": "boom"}
    assert P.ended({}, "CRASHED", None, None) is None and P.ended({}, "RUNNING", None, None) is None
