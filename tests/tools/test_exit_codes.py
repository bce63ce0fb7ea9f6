"""Every command exits 1 (refused, the reason naming the path) for a path that
is not a journal, and 2 only for bad usage (SPEC-NEXT section 6); each
--help says so."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from memable_log_tools import compact, dump, memable, send_signal

# (the command's main, its arguments after PATH)
COMMANDS: dict[str, tuple[Callable[[list[str]], int], list[str]]] = {
    "memable dump": (memable.main, ["dump"]),
    "memable compact": (memable.main, ["compact"]),
    "memable signal": (memable.main, ["signal"]),
    "memable status": (memable.main, ["status"]),
    "memable steps": (memable.main, ["steps"]),
    "memable instances": (memable.main, ["instances"]),
    "memable invoke": (memable.main, ["invoke"]),
    "memable cancel": (memable.main, ["cancel"]),
    "memable restart": (memable.main, ["restart"]),
    "memable forget": (memable.main, ["forget"]),
    "memable-dump": (dump.main, []),
    "memable-compact": (compact.main, []),
    "memable-signal": (send_signal.main, []),
}
AFTER_PATH = {
    "signal": ["wf", "i", "k"], "status": ["i"], "steps": ["i"], "invoke": ["wf"],
    "cancel": ["i"], "restart": ["i"], "forget": ["i", "k"],
}
TOOL_AFTER_PATH = {"memable-signal": ["wf", "i", "k"]}


def argv_for(name: str, path: str) -> list[str]:
    head = COMMANDS[name][1]
    if head:
        return [*head, path, *AFTER_PATH.get(head[0], [])]
    return [path, *TOOL_AFTER_PATH.get(name, [])]


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("kind", ["missing", "file", "empty directory"])
def test_a_path_that_is_not_a_journal_is_refused_with_exit_1(
    name: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "j"
    if kind == "file":
        path.write_text("x")
    elif kind == "empty directory":
        path.mkdir()
    main = COMMANDS[name][0]
    code = main(argv_for(name, str(path)))
    out, err = capsys.readouterr()
    assert code == 1, err
    assert str(path) in err
    assert "Traceback" not in err
    assert out == ""
    assert not path.exists() or kind != "missing"
    if kind == "empty directory":
        assert os.listdir(path) == []  # nothing created


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_documents_the_exit_codes(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    main, head = COMMANDS[name]
    with pytest.raises(SystemExit) as done:
        main([*head, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "1 refused" in text, text
    assert "not a journal" in text, text
    assert "2 bad usage" in text, text
