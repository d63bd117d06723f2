"""docs/api.md's code runs: every python block, top to bottom, in one namespace."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_api_page_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the page writes ckpt.pt and exported/
    namespace: dict = {"__name__": "api_docs"}
    code = blocks(DOC.read_text())
    assert len(code) >= 8
    for i, block in enumerate(code):
        try:
            exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - say which block failed
            pytest.fail(f"docs/api.md block {i + 1} raised {type(exc).__name__}: {exc}\n{block}")
    printed = capsys.readouterr().out
    accuracies = [float(a) for a in re.findall(r"(?:accuracy|: ) ?(0\.\d{3})", printed)]
    assert accuracies and min(accuracies) > 0.6, printed  # every recipe learned: none at chance (0.1)
