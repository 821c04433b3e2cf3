"""The replay mix: rows of earlier dataset versions and of a general set added to a retrain's training rows."""

from __future__ import annotations

import json

from tuneloop.data.dataset import add_replay, prepare_dataset, read_saved_rows
from tuneloop.data.validate import Row
from tuneloop.specs import DataSpec, ReplaySpec


def chat(i: int, word: str) -> dict:
    return {"messages": [{"role": "user", "content": f"{word} question {i}"}, {"role": "assistant", "content": word}]}


def dataset(tmp_path, name: str, word: str, n: int, eval_rows=None):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(chat(i, word)) + "\n" for i in range(n)))
    ds = prepare_dataset(path, DataSpec(validation_split=0.0, test_split=0.1), eval_data=eval_rows)
    ds.save(tmp_path / "datasets")
    return ds


def test_each_earlier_version_gives_its_share_and_the_version_changes(tmp_path):
    old = dataset(tmp_path, "old", "alpha", 200)
    older = dataset(tmp_path, "older", "beta", 100)
    new = dataset(tmp_path, "new", "gamma", 100)
    earlier = [(older.version, older.path), (old.version, old.path)]
    mixed = add_replay(new, ReplaySpec(fraction=0.1, per_version={old.version[:8]: 0.05}), earlier, seed=1)
    assert mixed.stats["replay"] == {older.version[:16]: round(0.1 * len(older.train)),
                                     old.version[:16]: round(0.05 * len(old.train))}
    assert len(mixed.train) == len(new.train) + mixed.stats["replay_rows"] and mixed.version != new.version
    assert mixed.eval_rows == new.eval_rows and mixed.validation == new.validation
    again = add_replay(new, ReplaySpec(fraction=0.1, per_version={old.version[:8]: 0.05}), earlier, seed=1)
    assert [r.key for r in again.train] == [r.key for r in mixed.train]  # the same rows for the same seed
    only_last = add_replay(new, ReplaySpec(fraction=0.1, versions=1), earlier, seed=1)
    assert list(only_last.stats["replay"]) == [old.version[:16]]


def test_held_out_prompts_and_rows_already_there_never_come_back(tmp_path):
    old = dataset(tmp_path, "old", "alpha", 50)
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(chat(i, "alpha")) + "\n" for i in range(10)))
    new = dataset(tmp_path, "new", "gamma", 40, eval_rows=held)
    mixed = add_replay(new, ReplaySpec(fraction=1.0), [(old.version, old.path)])
    prompts = {r.prompt_key for r in mixed.train}
    assert not prompts & {r.prompt_key for r in new.eval_rows}
    assert mixed.stats["replay"][old.version[:16]] == len([r for r in old.train if r.prompt_key not in
                                                           {e.prompt_key for e in new.eval_rows}])


def test_a_general_set_adds_its_share_of_this_datasets_rows(tmp_path):
    new = dataset(tmp_path, "new", "gamma", 100)
    general = [Row(i, chat(i, "general")["messages"]) for i in range(500)]
    mixed = add_replay(new, ReplaySpec(fraction=0.0, general_fraction=0.1), [], general_rows=general)
    assert mixed.stats["replay"] == {"general": round(0.1 * len(new.train))}


def test_saved_preference_rows_read_back_whole(tmp_path):
    rows = [Row(1, chat(1, "a")["messages"], rejected="b"), Row(2, chat(2, "c")["messages"], label=False)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows))
    back = read_saved_rows(path)
    assert [(r.canonical, r.rejected, r.label) for r in back] == [(r.canonical, r.rejected, r.label) for r in rows]
