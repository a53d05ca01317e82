"""The README is the user's door: its commands, links and generated reference must match."""

from __future__ import annotations

import re
from pathlib import Path

from vmmsim.cluster import cli
from vmmsim.cluster.cli import config_reference_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); target up to whitespace or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_config_reference_is_current():
    """docs/config.md is generated: regenerate with `vmmsim schema --markdown > docs/config.md`."""
    doc = (ROOT / "docs" / "config.md").read_text()
    assert doc == config_reference_markdown(), (
        "docs/config.md is stale: run `vmmsim schema --markdown > docs/config.md`"
    )


def test_schema_markdown_prints_the_generated_page(capsys):
    assert cli.main(["schema", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out == config_reference_markdown()
    assert out.startswith("# Configuration reference\n")
    assert "vmmsim schema --markdown > docs/config.md" in out.splitlines()[2]
    for section in ("## `[simulation]`", "## `[policy]`", "## `[[vms]]`", "## Limits"):
        assert section in out.splitlines()


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```sh\n(.*?)```", README, flags=re.S)
    commands = [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip()]
    test_cmd = next(c for c in commands if "pytest" in c and "venv" in c)
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
    quick = next(c for c in commands if "configs/quickstart.toml" in c)
    assert quick.startswith("python3 -m venv .venv && .venv/bin/pip install -e .")
    assert (ROOT / "configs" / "quickstart.toml").exists()


def test_readme_is_a_short_front_door():
    n = len(README.splitlines())
    assert n <= 300, f"README.md has {n} lines; move long sections to docs/"


def _relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not inside code blocks
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_link_pattern_finds_links():
    page = ROOT / "README.md"
    links = _relative_links(page)
    assert "docs/config.md" in links and "docs/api.md" in links


def test_every_relative_link_resolves():
    """Every relative markdown link (and image) in README.md and docs/*.md names a file."""
    broken = []
    for page in PAGES:
        for target in _relative_links(page):
            path = target.split("#", 1)[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"broken links: {broken}"
    images = [t for p in PAGES for t in _relative_links(p) if t.endswith(".png")]
    assert len(images) >= 5, images  # the paper figures in docs/paper.md


def test_every_anchor_resolves():
    """A link's `#anchor` names a heading of the page it points to (GitHub's slug rule)."""

    def slugs(page: Path) -> set[str]:
        heads = re.findall(
            r"^#+ (.*)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M
        )
        return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}

    broken = []
    for page in PAGES:
        for target in _relative_links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path) if path else page
            if anchor and dest.suffix == ".md" and dest.exists() and anchor not in slugs(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"broken anchors: {broken}"


SOURCE_PATH = re.compile(
    r"`((?:cluster|hosts|workloads|vmmsim|bench|configs|tests|examples)/[\w/.-]+"
    r"\.(?:py|toml|csv))`"
)


def test_source_paths_named_in_docs_exist():
    """A file path quoted in the docs (`hosts/x.py`) still exists after code moves."""
    missing = [
        f"{page.relative_to(ROOT)}: {m}"
        for page in PAGES
        for m in SOURCE_PATH.findall(page.read_text())
        if not (ROOT / m).exists()
    ]
    assert not missing, f"docs name files that do not exist: {missing}"
    assert SOURCE_PATH.findall("see `hosts/admission.py`") == ["hosts/admission.py"]
