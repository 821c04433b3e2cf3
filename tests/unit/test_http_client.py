"""The one HTTP client's retry rule (tuneloop.runtime.http): which failures are retried, which calls may be
repeated, and what is raised when they run out. In-process (httpx.MockTransport), no sockets."""

from __future__ import annotations

import httpx
import pytest

from tuneloop.errors import TransientError, TuneloopError, UserError
from tuneloop.runtime.http import HttpClient, retry_delay
from tuneloop.serving.rollout import PromotionError, ServingAdmin


def scripted(*answers):
    """A transport answering each request with the next of `answers` (a status, an exception class, or a
    Response); the last one repeats. `calls` records (method, path, idempotency key)."""
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, request.url.path, request.headers.get("idempotency-key")))
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, type):
            raise answer("scripted", request=request)
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(answer, json={"error": {"message": f"scripted {answer}"}} if answer >= 400 else {})

    return httpx.MockTransport(handle), calls


def client(*answers, **kw) -> tuple[HttpClient, list]:
    transport, calls = scripted(*answers)
    return HttpClient("http://svc.test/v1", "the service", backoff=0.001, max_retries=2, transport=transport,
                      **kw), calls


@pytest.mark.parametrize("failure", [500, 503, 408, 429, httpx.ReadTimeout, httpx.ConnectError,
                                     httpx.RemoteProtocolError])
def test_a_get_is_retried_on_every_transient_failure(failure):
    c, calls = client(failure, 200)
    assert c.json("GET", "/x") == {} and len(calls) == 2


def test_retries_spent_raise_a_transient_error_naming_the_last_failure():
    c, calls = client(503)
    with pytest.raises(TransientError, match=r"the service: GET http://svc.test/v1/x: HTTP 503 .*scripted 503.*"
                                             r"gave up after 3 attempts"):
        c.request("GET", "/x")
    assert len(calls) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_other_4xx_are_not_retried_and_carry_the_servers_message(status):
    c, calls = client(status)
    with pytest.raises(TuneloopError, match=f"answered HTTP {status}: scripted {status}") as e:
        c.request("GET", "/x")
    assert not isinstance(e.value, TransientError) and len(calls) == 1


def test_a_429_for_missing_quota_is_not_retried():
    c, calls = client(httpx.Response(429, json={"error": {"message": "quota", "code": "insufficient_quota"}}))
    with pytest.raises(TuneloopError, match="HTTP 429: quota"):
        c.request("GET", "/x")
    assert len(calls) == 1


def test_retry_after_is_honoured_and_capped():
    assert retry_delay(0, 1.0, 30.0, httpx.Response(429, headers={"Retry-After": "7"})) == 7.0
    assert retry_delay(0, 1.0, 5.0, httpx.Response(429, headers={"Retry-After": "70"})) == 5.0
    assert retry_delay(3, 1.0, 30.0, httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct"})) == 8.0


@pytest.mark.parametrize("lost", [httpx.ReadTimeout, httpx.RemoteProtocolError, 500])
def test_a_plain_post_whose_answer_was_lost_is_not_repeated(lost):
    c, calls = client(lost, 200)
    with pytest.raises(TuneloopError) as e:
        c.request("POST", "/rollback")
    assert not isinstance(e.value, TransientError)  # the task decorators do not replay it either
    assert len(calls) == 1


@pytest.mark.parametrize("never_acted_on", [httpx.ConnectError, httpx.ConnectTimeout, 429, 408])
def test_a_plain_post_the_server_never_acted_on_is_retried(never_acted_on):
    c, calls = client(never_acted_on, 200)
    c.request("POST", "/rollback")
    assert len(calls) == 2


def test_a_post_declared_idempotent_is_retried_like_a_get():
    c, calls = client(httpx.ReadTimeout, 502, 200)
    c.request("POST", "/chat/completions", idempotent=True)
    assert len(calls) == 3


def test_with_idempotency_keys_a_post_keeps_one_key_across_its_retries():
    c, calls = client(500, httpx.ReadTimeout, 200, idempotency_keys=True)
    c.request("POST", "/jobs")
    c.request("POST", "/jobs")
    keys = [key for _, _, key in calls]
    assert len(calls) == 4 and keys[0] == keys[1] == keys[2] and keys[3] != keys[0]
    c.request("GET", "/jobs")
    assert calls[-1][2] is None


def test_a_bad_url_is_a_user_error():
    with pytest.raises(UserError, match="http"):
        HttpClient("localhost:8000", "the service")


def test_the_serving_admin_retries_switch_but_never_repeats_a_rollback():
    transport, calls = scripted(httpx.ReadTimeout, 200)
    admin = ServingAdmin("http://serve.test:8000", backoff=0.001, transport=transport)
    admin.switch("green")
    assert [p for _, p, _ in calls] == ["/admin/switch", "/admin/switch"]

    transport, calls = scripted(httpx.ReadTimeout, 200)
    admin = ServingAdmin("http://serve.test:8000", backoff=0.001, transport=transport)
    with pytest.raises(TuneloopError, match="may or may not have been applied") as e:
        admin.rollback()
    assert not isinstance(e.value, TransientError) and len(calls) == 1

    transport, calls = scripted(httpx.Response(409, json={"error": {"message": "slot is loading"}}))
    admin = ServingAdmin("http://serve.test:8000", transport=transport)
    with pytest.raises(PromotionError, match=r"POST /admin/slots/green/load -> 409: slot is loading"):
        admin.load("green", "v2")
