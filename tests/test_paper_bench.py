"""``bench/paper.py`` kept honest: the table it writes, where it writes it, and that every
experiment it names is a config that loads.  (Running the experiments themselves is
``python bench/paper.py``; minutes, not a CI test.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("vmm_paper", ROOT / "bench" / "paper.py")
paper = importlib.util.module_from_spec(_spec)
sys.modules["vmm_paper"] = paper  # dataclasses resolve their module by name
_spec.loader.exec_module(paper)

from vmmsim.cluster.config import load_config  # noqa: E402


def test_rows_give_a_difference_only_against_a_number() -> None:
    assert paper.Row("4", "shared", 67.0, 65.44, "%").cells() == [
        "4",
        "shared",
        "67%",
        "65.4%",
        "-1.6",
    ]
    assert paper.Row("7", "gain", "> 30%", 37.84, "%").cells()[2:] == ["> 30%", "37.8%", ""]


def test_write_docs_replaces_only_the_marked_block(tmp_path: Path) -> None:
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    for p in (a, b):
        p.write_text(f"head {p.name}\n{paper.BEGIN}\nold\n{paper.END}\ntail\n")
    paper.write_docs("| full |", "| short |", (a, b))
    assert a.read_text() == f"head a.md\n{paper.BEGIN}\n| short |\n{paper.END}\ntail\n"
    assert b.read_text() == f"head b.md\n{paper.BEGIN}\n| full |\n{paper.END}\ntail\n"
    c = tmp_path / "c.md"
    c.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- paper.py: begin -->"):
        paper.write_docs("x", "y", (c,))
    assert c.read_text() == "no markers\n"


def test_the_readme_gets_the_short_table() -> None:
    assert paper.DOCS[0].name == "README.md"


def test_the_repository_docs_carry_the_markers() -> None:
    for p in paper.DOCS:
        text = p.read_text()
        assert text.count(paper.BEGIN) == 1 and text.count(paper.END) == 1, p


def test_a_partial_run_may_not_overwrite_the_table(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        paper.main(["--only", "fig4", "--write"])
    assert e.value.code == 2
    assert "--write replaces the whole table" in capsys.readouterr().err


def test_every_experiment_config_loads() -> None:
    names = {e.name for e in paper.EXPERIMENTS}
    assert {"fig2", "fig4", "fig5", "fig6", "fig7", "fig8", "salting", "compression"} == names
    for entry in (c for e in paper.EXPERIMENTS for c in e.configs):
        name, overrides = paper.split_entry(entry)
        load_config(ROOT / "configs" / name, overrides)
    assert paper.split_entry("a.toml x=1 y=2") == ("a.toml", ["x=1", "y=2"])
