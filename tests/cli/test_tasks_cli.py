"""``lopt tasks`` lists every registered task on one line each."""

import json

import lopt.tasks as T
from lopt.cli.main import main


def test_lopt_tasks_lists_every_name_once(capsys):
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(T.names())
    for name, line in zip(T.names(), lines, strict=True):
        assert line.split()[0] == name
        assert T.describe(name) in line


def test_lopt_tasks_json(capsys):
    assert main(["tasks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(T.names())
    assert {r["kind"] for r in rows} == {"task", "family", "mixture"}
