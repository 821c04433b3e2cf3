"""`tuneloop registry ...` on a folder and on S3 (a moto server): list, show, compare, search, tag,
delete, lineage, alias; bad input gets the value, the rule and the fix."""

from __future__ import annotations

import json

import pytest

from regtools import BACKENDS, location, make_adapter, new_version, raw_put
from tuneloop.cli.main import main
from tuneloop.registry import open_registry

WINDOW = {"start": "2026-10-01T00:00:00+00:00", "end": "2026-10-31T00:00:00+00:00"}


@pytest.fixture(params=BACKENDS)
def populated(request, tmp_path) -> str:
    """v1 champion (0.4) <- v2 candidate (0.7, feedback window, tagged team=search)."""
    request.getfixturevalue("state_dir")
    loc = location(request.param, request, tmp_path)
    reg = open_registry(loc)
    new_version(reg, make_adapter(tmp_path / "a1"), em=0.4, data="a" * 64)
    new_version(reg, make_adapter(tmp_path / "a2", payload=b"other"), em=0.7, parent="v1", data="b" * 64,
                extra={"feedback_window": WINDOW})
    reg.record_decision("v1", {"promote": True, "reason": "promoted: first"})
    reg.tag("v2", {"team": "search"})
    return loc


def run(capsys, loc, *args) -> tuple[int, str, str]:
    code = main(["registry", "--registry", loc, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_list(populated, capsys):
    code, out, _ = run(capsys, populated, "list")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith("v1") and "champion" in lines[0] and "exact_match=0.400" in lines[0]
    assert lines[1].startswith("v2") and "candidate" in lines[1] and "exact_match=0.700" in lines[1]
    assert lines[1].endswith("team=search")


def test_cli_list_empty(tmp_path, capsys):
    code, out, _ = run(capsys, str(tmp_path / "empty"), "list")
    assert code == 0 and "no versions yet" in out


def test_cli_show(populated, capsys):
    code, out, _ = run(capsys, populated, "show", "v1")
    data = json.loads(out)
    assert code == 0 and data["manifest"]["id"] == "v1"
    assert data["status"]["status"] == "champion" and data["integrity"] == "ok"
    _, out, _ = run(capsys, populated, "show", "champion")
    assert json.loads(out)["manifest"]["id"] == "v1"
    _, out, _ = run(capsys, populated, "show", "v2")
    assert json.loads(out)["tags"] == {"team": "search"}


def test_cli_show_reports_tampering(populated, capsys):
    raw_put(open_registry(populated), "versions/v2/adapter/adapter_model.safetensors", b"evil")
    code, out, _ = run(capsys, populated, "show", "v2")
    assert code == 0 and json.loads(out)["integrity"] == ["adapter/adapter_model.safetensors"]


def test_cli_compare(populated, capsys):
    code, out, _ = run(capsys, populated, "compare", "v1", "v2")
    header, *rows = out.splitlines()
    assert code == 0 and "v1" in header and "v2" in header
    em = next(r for r in rows if r.startswith("exact_match"))
    assert "0.4000" in em and "0.7000" in em


def test_cli_unknown_refs(populated, capsys):
    for args in (["show", "nope"], ["compare", "v1", "nope"], ["tag", "nope", "a=b"], ["delete", "nope"],
                 ["lineage", "nope"], ["alias", "production", "nope"]):
        code, out, err = run(capsys, populated, *args)
        assert code == 2 and out == "", args
        assert err.startswith("error: 'nope': is not a version id or alias"), err
        assert "v1, v2, champion" in err and "tuneloop registry list" in err


def test_cli_search(populated, capsys):
    def ids(*args):
        code, out, err = run(capsys, populated, "search", *args)
        assert code == 0, err
        return [line.split()[0] for line in out.splitlines() if line.startswith("v")]

    assert ids() == ["v1", "v2"]
    assert ids("--metric", "exact_match>=0.5") == ["v2"]
    assert ids("--metric", "exact_match>0.3", "--metric", "token_f1<0.6") == ["v1"]
    assert ids("--tag", "team=search") == ["v2"]
    assert ids("--status", "champion") == ["v1"]
    assert ids("--base", "tuneloop/tiny-llama", "--tag", "team=search", "--metric", "exact_match>=0.7") == ["v2"]
    assert ids("--base", "someone/else") == []
    _, out, _ = run(capsys, populated, "search", "--tag", "team=ads")
    assert out.strip() == "no version matches"


@pytest.mark.parametrize("args, value, rule", [
    (["--metric", "exact_match=>0.8"], "'exact_match=>0.8'", "METRIC OP NUMBER"),
    (["--metric", "exact_mach>=0.8"], "'exact_mach'", "is not a metric of any version"),
    (["--status", "best"], "'best'", "is not a status"),
    (["--tag", "team"], "'team'", "KEY=VALUE"),
])
def test_cli_search_bad_input(populated, capsys, args, value, rule):
    code, out, err = run(capsys, populated, "search", *args)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {value}: ") and rule in err and "Fix:" in err


def test_cli_tag(populated, capsys):
    code, out, _ = run(capsys, populated, "tag", "v1", "team=ads", "owner=ml-platform")
    assert code == 0 and out.strip() == "v1: owner=ml-platform team=ads"
    code, out, _ = run(capsys, populated, "tag", "champion", "--remove", "owner")
    assert code == 0 and out.strip() == "v1: team=ads"
    assert open_registry(populated).get("v1").tags == {"team": "ads"}
    code, _, err = run(capsys, populated, "tag", "v1", "no-equals-sign")
    assert code == 2 and "'no-equals-sign': a tag is KEY=VALUE" in err
    code, _, err = run(capsys, populated, "tag", "v1")
    assert code == 2 and "needs at least one KEY=VALUE or --remove KEY" in err


def test_cli_delete(populated, capsys):
    code, _, err = run(capsys, populated, "delete", "v1")
    assert code == 2
    assert "error: v1: is what champion points to, and a version an alias points to is never deleted" in err
    assert "Fix: move the alias first: tuneloop registry alias champion OTHER_VERSION" in err
    code, out, _ = run(capsys, populated, "delete", "v2")
    assert code == 0 and out.startswith("deleted v2 from ")
    assert open_registry(populated).ids() == ["v1"]
    _, out, _ = run(capsys, populated, "list")
    assert [line.split()[0] for line in out.splitlines()] == ["v1"]


def test_cli_lineage(populated, capsys):
    code, out, _ = run(capsys, populated, "lineage")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith("v1  champion [champion]  data=aaaaaaaaaaaa  feedback=-  exact_match=0.400")
    assert lines[1].startswith("└── v2  candidate  data=bbbbbbbbbbbb  feedback=2026-10-01..2026-10-31")
    code, out, _ = run(capsys, populated, "lineage", "v2")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["v1", "└──"]


def test_cli_alias(populated, capsys):
    code, out, _ = run(capsys, populated, "alias", "production", "v2", "--expected", "none")
    assert code == 0 and out.strip() == "production: unset -> v2"
    code, _, err = run(capsys, populated, "alias", "production", "v1", "--expected", "v1")
    assert code == 1 and "production points to v2, not v1 as expected; nothing changed" in err
    code, out, _ = run(capsys, populated, "alias", "production", "--clear")
    assert code == 0 and out.strip() == "production: v2 -> unset"
    code, _, err = run(capsys, populated, "alias", "production")
    assert code == 2 and "needs either a version (REF) or --clear" in err


def test_cli_registry_option_after_the_command_and_from_the_environment(populated, capsys, monkeypatch):
    assert main(["registry", "lineage", "--registry", populated]) == 0
    assert capsys.readouterr().out.startswith("v1")
    monkeypatch.setenv("TUNELOOP_REGISTRY", populated)
    assert main(["registry", "search", "--tag", "team=search"]) == 0
    assert capsys.readouterr().out.startswith("v2")
