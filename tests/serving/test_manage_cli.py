"""The management surface from the CLI: deploy (server admin API) and jobs (Prefect's API)."""

from __future__ import annotations

import json

from pathlib import Path

import httpx
import pytest

from tuneloop.cli.main import main


def test_deploy_status_load_switch_rollback(make_server, capsys):
    srv = make_server("v1")
    base = ["deploy", "--server", srv.url]
    assert main(base + ["status"]) == 0
    out = capsys.readouterr().out
    assert "blue   live" in out and "v1" in out and "green  idle" in out
    assert main(base + ["load", "green", "v2"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v2"
    assert main(base + ["switch", "green"]) == 0
    assert "live: green (v2)" in capsys.readouterr().out
    assert httpx.get(srv.url + "/admin/status").json()["live"] == "green"
    assert main(base + ["rollback"]) == 0
    assert "live: blue (v1)" in capsys.readouterr().out


def test_deploy_against_a_missing_server_says_so(capsys):
    assert main(["deploy", "--server", "http://127.0.0.1:9", "status"]) != 0
    assert "unreachable" in capsys.readouterr().err


def test_jobs_create_list_get_cancel(prefect_harness, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from jobflow import tl_test_job

    dep = tl_test_job.to_deployment(name="jobs-cli")
    dep.apply()
    assert main(["jobs", "create", "--deployment", "tl-test-job/jobs-cli", "--param", "n=3"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["status"] == "queued" and created["state"] == "Scheduled" and created["parameters"] == {"n": 3}
    assert main(["jobs", "list", "--deployment", "tl-test-job/jobs-cli"]) == 0
    assert created["id"] in capsys.readouterr().out
    assert main(["jobs", "get", created["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == created["id"]
    assert main(["jobs", "cancel", created["id"]]) == 0
    cancelled = json.loads(capsys.readouterr().out)
    assert cancelled["status"] == "cancelled" and cancelled["state"] in ("Cancelling", "Cancelled")
    assert main(["jobs", "events", created["id"]]) == 0
    assert main(["jobs", "get", "not-a-uuid"]) != 0
    assert "flow run UUID" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["jobs", "create", "--deployment", "x/y", "--param", "novalue"]])
def test_jobs_bad_parameters_are_refused(prefect_harness, bad, capsys):
    assert main(bad) != 0
    assert "KEY=VALUE" in capsys.readouterr().err
