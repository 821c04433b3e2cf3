"""The typed manifest view reads odd (hand-edited or older) manifests the way the string-keyed readers did."""

from tuneloop.registry.manifest import Manifest

BASE = dict(id="v1", base_model="tuneloop/tiny-llama", files=[], dataset_version="d" * 64, parent_version=None,
            created_at="2026-12-07T00:00:00+00:00")


def test_null_mappings_read_as_empty_and_a_non_mapping_incumbent_as_absent():
    m = Manifest.from_json({**BASE, "spec": None, "metrics": None, "incumbent": "champion v0"})
    assert m.spec == {} and m.metrics == {} and m.incumbent is None


def test_a_regular_manifest_round_trips_key_for_key():
    doc = {**BASE, "spec": {"tenant": "acme"}, "metrics": {"exact_match": 0.9}, "tenant": "acme",
           "incumbent": {"label": "base", "metrics": {"exact_match": 0.0}}, "custom": [1, 2]}
    m = Manifest.from_json(doc)
    assert m.tenant == "acme" and m.incumbent.label == "base"
    assert m.to_json() == doc
