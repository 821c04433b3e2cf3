"""The deployment files `tuneloop up` applies ship in the package (an installed wheel has no checkout): the
packaged copies are byte-equal to the checkout's, and `up` applies them with module entrypoints that resolve
from the installed package, whatever folder it was started from."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from conftest import ROOT
from tuneloop.cli.up import _deployment_files, _fingerprint, _module_entrypoint
from tuneloop.errors import UserError
from tuneloop.service.home import Home

# the checkout's file (what `prefect deploy --all` reads there) -> its copy in the package
COPIES = {"prefect.yaml": "prefect.yaml", "deployments/automations.yaml": "automations.yaml"}


@pytest.mark.parametrize("checkout", sorted(COPIES))
def test_the_packaged_copy_is_the_checkouts_file(checkout):
    packaged = resources.files("tuneloop").joinpath("assets", COPIES[checkout])
    assert packaged.read_bytes() == (ROOT / checkout).read_bytes(), (
        f"src/tuneloop/assets/{COPIES[checkout]} differs from {checkout}: edit {checkout}, then "
        f"cp {checkout} src/tuneloop/assets/{COPIES[checkout]}")


def test_up_applies_module_entrypoints_that_load_the_same_flows(tmp_path, monkeypatch):
    from prefect.flows import Flow, load_flow_from_entrypoint

    home, workdir = Home.at(tmp_path / "home"), tmp_path / "elsewhere"
    home.root.mkdir()
    workdir.mkdir()
    deployments, automations = _deployment_files(home, workdir, threshold=7, window=3600)
    assert automations.read_bytes() == (ROOT / "deployments" / "automations.yaml").read_bytes()

    config = yaml.safe_load(deployments.read_text())
    shipped = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert config["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(workdir)}}]
    assert [d["name"] for d in config["deployments"]] == list(shipped)
    monkeypatch.chdir(workdir)  # no src/ here: the flows come from the installed package
    for d in config["deployments"]:
        assert ":" not in d["entrypoint"] and d["entrypoint"].startswith("tuneloop.flows."), d["entrypoint"]
        assert "schedules" not in d and "pull" not in d  # the module needs no folder (retrain-gpu's is /app)
        for got, want in zip(d.get("triggers", []), shipped[d["name"]].get("triggers", []), strict=True):
            negatives = "tuneloop.feedback.negative" in want["expect"]
            # the threshold and its window set, the rest as shipped
            assert got == want | ({"threshold": 7, "within": 3600} if negatives else {})
        assert {k: v for k, v in d.items() if k not in ("entrypoint", "triggers")} == \
            {k: v for k, v in shipped[d["name"]].items() if k not in ("entrypoint", "schedules", "triggers", "pull")}
        flow = load_flow_from_entrypoint(d["entrypoint"])
        assert isinstance(flow, Flow) and flow.fn.__name__ == shipped[d["name"]]["entrypoint"].rsplit(":", 1)[1]


def test_the_fingerprint_follows_the_working_directory(tmp_path):
    home = Home.at(tmp_path / "home")
    home.root.mkdir()
    first = _fingerprint(*_deployment_files(home, tmp_path / "a"))
    assert _fingerprint(*_deployment_files(home, tmp_path / "a")) == first
    assert _fingerprint(*_deployment_files(home, tmp_path / "b")) != first  # applied again


@pytest.mark.parametrize("entrypoint, rule", [
    ("flows/retrain.py:retrain", "an entrypoint must be src/tuneloop/"),
    ("src/other/flows/retrain.py:retrain", "an entrypoint must be src/tuneloop/"),
    ("src/tuneloop/flows/retrain.py", "an entrypoint must be src/tuneloop/"),
    ("src/tuneloop/flows/no_such_flow.py:f", "has no module tuneloop.flows.no_such_flow"),
])
def test_an_entrypoint_up_cannot_run_is_named(entrypoint, rule):
    with pytest.raises(UserError) as e:
        _module_entrypoint("retrain", entrypoint)
    assert entrypoint in str(e.value) and "'retrain'" in str(e.value) and rule in str(e.value)
    assert "Fix:" in str(e.value)


def test_with_a_collect_cadence_up_reads_the_drop_file_on_that_schedule(tmp_path):
    from tuneloop.cli.up import _deployment_files
    from tuneloop.service.home import Home
    from tuneloop.specs import CollectSpec

    home = Home.at(tmp_path / "home")
    home.root.mkdir()
    off = yaml.safe_load(_deployment_files(home, tmp_path, every=0)[0].read_text())
    assert all("schedules" not in d for d in off["deployments"])
    on = {d["name"]: d for d in yaml.safe_load(_deployment_files(home, tmp_path, every=30)[0].read_text())["deployments"]}
    assert on["collect-feedback"]["schedules"] == [{"interval": 30}]
    assert all("schedules" not in d for n, d in on.items() if n != "collect-feedback")
    spec = CollectSpec(**on["collect-feedback"]["parameters"]["spec"])
    assert [(s.kind, s.path, s.missing_ok) for s in spec.sources] == [("file", home.incoming, True)]


# up's whole-number settings: (variable, its reader in tuneloop.cli.up, refused values, the rule named, a good one)
UP_SETTINGS = [
    ("TUNELOOP_NEGATIVES_THRESHOLD", "negatives_threshold", ["0", "-3", "ten", "2.5"],
     "whole number of events, at least 1", "12"),
    ("TUNELOOP_NEGATIVES_WINDOW", "negatives_window", ["59", "-3", "a week", "90.5"],
     "whole number of seconds, at least 60", "86400"),
    ("TUNELOOP_COLLECT_EVERY", "collect_every", ["-5", "2", "ten", "1.5"], "whole number of seconds, at least 5",
     "30"),
]


@pytest.mark.parametrize("name,reader,raw,rule,good",
                         [(n, f, raw, rule, good) for n, f, bad, rule, good in UP_SETTINGS for raw in bad])
def test_a_bad_up_setting_stops_up_naming_it(name, reader, raw, rule, good, monkeypatch):
    import tuneloop.cli.up as up

    read = getattr(up, reader)
    monkeypatch.setenv(name, raw)
    with pytest.raises(UserError) as e:
        read()
    assert f"{name}={raw!r}" in str(e.value) and rule in str(e.value) and "Fix:" in str(e.value)
    monkeypatch.setenv(name, good)
    assert read() == int(good)
    monkeypatch.delenv(name)
    assert read() == 0  # the shipped value (the threshold's 100, a week) or, for the cadence, off


def test_a_collect_cadence_of_zero_is_off(monkeypatch):
    from tuneloop.cli.up import collect_every

    monkeypatch.setenv("TUNELOOP_COLLECT_EVERY", "0")
    assert collect_every() == 0
