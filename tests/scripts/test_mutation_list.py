"""The curated mutation list (``scripts/mutation_check.py``) still fits the source.

The mutation check is not part of CI (it runs the targeted tests once per mutation), so a
refactor that moves a mutated line would only show up the next time someone runs it, as an
abort halfway through. This fast check applies every mutation to a temporary copy of ``src/``
(the script's own ``apply``, which refuses text that does not occur exactly once) and checks
that every test target it names exists.
"""

from pathlib import Path

import pytest
from script_module import load_script

ROOT = Path(__file__).resolve().parents[2]

mutation_check = load_script("mutation_check")


@pytest.mark.parametrize("mutation", mutation_check.MUTATIONS, ids=lambda m: m.id)
def test_mutation_applies_once_and_names_existing_tests(mutation, tmp_path):
    src = tmp_path / "src"
    target = src / "lopt" / mutation.file
    target.parent.mkdir(parents=True)
    original = (ROOT / "src" / "lopt" / mutation.file).read_text()
    target.write_text(original)
    mutation_check.apply(mutation, src)  # SystemExit when a text is missing or ambiguous
    assert target.read_text() != original
    for test in mutation.tests:
        assert (ROOT / test.split("::")[0]).is_file(), test


def test_mutation_ids_are_unique():
    ids = [m.id for m in mutation_check.MUTATIONS]
    assert len(ids) == len(set(ids))
