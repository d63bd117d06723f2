"""The house rules a newcomer relies on: no import circle among modules or packages, no module much over 300 lines."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_circles(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["import_graph.py"])
    tool = runpy.run_path(str(ROOT / "scripts" / "import_graph.py"))
    assert tool["main"]() == 0, capsys.readouterr().out


def test_no_module_much_over_300_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "src").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 320}
    assert not long, long
