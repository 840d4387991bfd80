"""The import graph follows docs/architecture.md: no circles, no import against the layer table (scripts/architecture.py)."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("architecture", ROOT / "scripts" / "architecture.py")
arch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arch)


def test_no_import_circles():
    assert arch.cycles(arch.import_graph()) == []


def test_imports_follow_the_layer_table():
    assert arch.violations(arch.import_graph(), arch.read_layers()) == []


def test_every_package_is_in_the_table():
    units = {arch.unit_of(m) for m in arch.import_graph()}
    assert units <= set(arch.read_layers())


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        f = tmp_path / "src" / "scratchlm" / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    return tmp_path / "src"


def test_graph_sees_lazy_relative_and_from_package_imports(tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "",
        "base.py": "",
        "model/__init__.py": "",
        "model/a.py": "from scratchlm.model import b\nfrom . import c\n",
        "model/b.py": "def f():\n    from scratchlm.base import x\n",
        "model/c.py": "from ..base import y\nimport scratchlm.model.b\n",
    })
    g = arch.import_graph(src)
    assert g["scratchlm.model.a"] == {"scratchlm.model.b", "scratchlm.model.c"}
    assert g["scratchlm.model.b"] == {"scratchlm.base"}
    assert g["scratchlm.model.c"] == {"scratchlm.base", "scratchlm.model.b"}


def test_cycles_finds_a_circle_and_only_it():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert arch.cycles(g) == [["a", "b", "c"]]


def test_violations_catch_upward_sideways_and_cli_imports(tmp_path):
    doc = tmp_path / "architecture.md"
    doc.write_text("| layer | units |\n|---|---|\n| 0 | `config` |\n| 1 | `model/` `data/` |\n| 2 | `train/` |\n"
                   "| 3 | `cli` |\n")
    layers = arch.read_layers(doc)
    assert layers == {"config": 0, "model": 1, "data": 1, "train": 2, "cli": 3}
    g = {
        "scratchlm.config": {"scratchlm.model.layers"},          # up
        "scratchlm.model.layers": {"scratchlm.data.corpus", "scratchlm.model.masks"},  # sideways; own package ok
        "scratchlm.train.loop": {"scratchlm.train.cli", "scratchlm.config"},  # a library module importing a CLI
        "scratchlm.train.cli": {"scratchlm.train.loop"},          # the CLI may import its library
        "scratchlm.oops": set(),                                  # not in the table
    }
    bad = arch.violations(g, layers)
    assert len(bad) == 4
    assert any("scratchlm.config (layer 0" in b and "model.layers" in b for b in bad)
    assert any("scratchlm.model.layers" in b and "data.corpus" in b for b in bad)
    assert any("scratchlm.train.loop" in b and "train.cli" in b for b in bad)
    assert any("'oops'" in b for b in bad)


def test_read_layers_refuses_a_page_without_a_table(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("no table here\n")
    with pytest.raises(ValueError, match="no layer table"):
        arch.read_layers(doc)
