"""The README is the user's door: its commands and reference must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from vmmsim.cluster.config import describe_schema

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_config_reference_is_current():
    """`vmmsim schema` output is pasted into the README; regenerate it when keys change."""
    missing = [ln for ln in describe_schema().splitlines() if ln.strip() and ln not in README]
    assert not missing, f"README config reference is stale, e.g. {missing[:3]}"


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```sh\n(.*?)```", README, flags=re.S)
    commands = [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip()]
    test_cmd = next(c for c in commands if "pytest" in c and "venv" in c)
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
    quick = next(c for c in commands if "configs/quickstart.toml" in c)
    assert quick.startswith("python3 -m venv .venv && .venv/bin/pip install -e .")
    assert (ROOT / "configs" / "quickstart.toml").exists()
