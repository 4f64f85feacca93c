"""``scripts/ship_weights.py --sync-notes``: the JSON card takes the Markdown card's notes.

Run on copies of the shipped cards in a temporary folder, so the package is never touched.
"""

import json
import shutil

import pytest
from script_module import load_script

from lopt.optimizers import pretrained

ship_weights = load_script("ship_weights")


@pytest.fixture
def cards(tmp_path):
    if pretrained.model_card("star") is None:
        pytest.skip("no star weights ship")
    for suffix in (".md", ".json"):
        shutil.copyfile(pretrained.weights_dir() / f"star{suffix}", tmp_path / f"star{suffix}")
    return tmp_path


def test_sync_copies_edited_notes_and_nothing_else(cards):
    before = json.loads((cards / "star.json").read_text())
    md = cards / "star.md"
    head, sep, _ = md.read_text().partition("## Notes\n\n")
    md.write_text(head + sep + "A new note.\n\nSecond paragraph.\n")
    assert ship_weights.sync_notes("star", cards) is True
    after = json.loads((cards / "star.json").read_text())
    assert after["notes"] == "A new note.\n\nSecond paragraph.\n"
    assert {k: v for k, v in after.items() if k != "notes"} == {
        k: v for k, v in before.items() if k != "notes"}
    assert ship_weights.sync_notes("star", cards) is False  # a second sync has nothing to do


def test_sync_refuses_a_card_without_notes(cards):
    md = cards / "star.md"
    md.write_text(md.read_text().replace("## Notes", "## Remarks"))
    with pytest.raises(SystemExit, match="no '## Notes' section"):
        ship_weights.sync_notes("star", cards)
    with pytest.raises(SystemExit, match="no shipped blackbox card"):
        ship_weights.sync_notes("blackbox", cards)
