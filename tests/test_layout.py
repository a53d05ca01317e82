"""The package's layout rules, checked over the source (AST, nothing imported).

* no import cycle among ``vmmsim`` modules (imports under ``TYPE_CHECKING`` and inside
  functions count: a cycle is a cycle for a reader too);
* no ``_private`` name used across modules: neither ``from vmmsim.m import _x`` nor
  ``m._x`` on an imported ``vmmsim`` module;
* nothing under ``hosts/`` imports Ray (a host runs in-process as well as in an actor).

Scope: static imports only (``importlib`` calls are not followed).  Each rule is also run
on a small planted example, so a checker that finds nothing cannot pass by accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: installed name -> folder in the repository (pyproject's package-dir mapping)
PACKAGES = {
    "vmmsim": "vmmsim",
    "vmmsim.cluster": "cluster",
    "vmmsim.hosts": "hosts",
    "vmmsim.workloads": "workloads",
}


def _modules() -> dict[str, str]:
    """Installed module name -> source text, for every module of the package."""
    out = {}
    for pkg, folder in PACKAGES.items():
        base = ROOT / folder
        for p in sorted(base.rglob("*.py")):
            parts = list(p.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([pkg, *parts])
            if pkg == "vmmsim" and parts and f"vmmsim.{parts[0]}" in PACKAGES:
                continue  # (a front-package file of the same name as a mapped package)
            out[name] = p.read_text()
    return out


def _resolve(mod: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def analyse(sources: dict[str, str]) -> tuple[dict[str, set[str]], list[str], list[str]]:
    """(import graph among ``sources``, private names used across modules, Ray imports
    under ``vmmsim.hosts``)."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    private: list[str] = []
    ray: list[str] = []
    for mod, text in sources.items():
        tree = ast.parse(text)
        is_pkg = any(k.startswith(mod + ".") for k in sources)
        aliases: dict[str, str] = {}  # local name -> vmmsim module
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                for a in node.names:
                    targets.append(a.name)
                    if a.name in sources and a.asname:
                        aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(mod, node, is_pkg)
                for a in node.names:
                    full = f"{src}.{a.name}"
                    if full in sources:  # a submodule: no edge to its package's __init__
                        targets.append(full)
                        aliases[a.asname or a.name] = full
                        continue
                    targets.append(src)
                    if src in sources and a.name.startswith("_") and src != mod:
                        private.append(f"{mod}: from {src} import {a.name}")
            for t in targets:
                if mod.startswith("vmmsim.hosts") and (t == "ray" or t.startswith("ray.")):
                    ray.append(f"{mod}: imports {t}")
                hit = next((s for s in (t, t.rsplit(".", 1)[0]) if s in sources), None)
                if hit and hit != mod:
                    graph[mod].add(hit)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                private.append(f"{mod}: {aliases[node.value.id]}.{node.attr}")
    return graph, private, ray


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    graph, _, _ = analyse(_modules())
    assert cycles(graph) == []


def test_no_private_names_across_modules():
    _, private, _ = analyse(_modules())
    assert private == []


def test_hosts_never_import_ray():
    _, _, ray = analyse(_modules())
    assert ray == []


def test_the_checks_find_planted_faults():
    """A cycle (also through ``TYPE_CHECKING``), both kinds of private use and a Ray
    import under hosts are found."""
    src = {
        "vmmsim.hosts": "",
        "vmmsim.hosts.a": "from vmmsim.hosts.b import f\nimport ray\n",
        "vmmsim.hosts.b": (
            "from typing import TYPE_CHECKING\n"
            "from vmmsim.hosts import c\n"
            "if TYPE_CHECKING:\n    from vmmsim.hosts.a import g\n"
            "x = c._hidden\n"
        ),
        "vmmsim.hosts.c": "def _hidden(): pass\n",
        "vmmsim.hosts.d": "from vmmsim.hosts.c import _hidden\n",
    }
    graph, private, ray = analyse(src)
    assert cycles(graph) == [["vmmsim.hosts.a", "vmmsim.hosts.b"]]
    assert private == [
        "vmmsim.hosts.b: vmmsim.hosts.c._hidden",
        "vmmsim.hosts.d: from vmmsim.hosts.c import _hidden",
    ]
    assert ray == ["vmmsim.hosts.a: imports ray"]


def test_the_mechanism_homes_exist():
    """The layout of ``docs/layout.md``: each mechanism's module or subpackage."""
    mods = _modules()
    for m in (
        "vmmsim.hosts.balloon",
        "vmmsim.hosts.sharing",
        "vmmsim.hosts.sharing.index",
        "vmmsim.hosts.sharing.scan",
        "vmmsim.hosts.vmm_swap",
        "vmmsim.hosts.guest_os",
        "vmmsim.hosts.working_set",
        "vmmsim.hosts.free_memory",
        "vmmsim.hosts.allocation",
    ):
        assert m in mods, m


def kernel_rule_violations(sources: dict[str, str]) -> list[str]:
    """The naming rule of compiled code: a mechanism's kernels sit in its own module or,
    when they are its larger part, in ``<module>_kernel.py`` beside it.  So every
    ``*_kernel`` module has its mechanism's module as a sibling, and no other module name
    says "kernel"."""
    bad = []
    for name in sources:
        leaf = name.rsplit(".", 1)[-1]
        if leaf.endswith("_kernel"):
            sibling = name[: -len("_kernel")]
            if sibling not in sources:
                bad.append(f"{name}: no {sibling} beside it")
        elif "kernel" in leaf:
            bad.append(f"{name}: kernels go in <mechanism>_kernel")
    return bad


def test_kernels_sit_beside_their_mechanism():
    assert kernel_rule_violations(_modules()) == []
    planted = {"vmmsim.hosts.vm": "", "vmmsim.hosts.vm_kernel": "", "vmmsim.hosts.x_kernel": ""}
    planted["vmmsim.hosts.rng_kernels"] = ""
    assert kernel_rule_violations(planted) == [
        "vmmsim.hosts.x_kernel: no vmmsim.hosts.x beside it",
        "vmmsim.hosts.rng_kernels: kernels go in <mechanism>_kernel",
    ]


def test_a_host_actor_imports_no_api_or_cli() -> None:
    """``vmmsim/__init__`` exports lazily (PEP 562): a host actor process -- 64 of them
    start for the large run -- imports the host side only, not the API, the CLI, the
    config parser or plotting (~0.1 s less per actor, measured), nor Arrow (imported
    where a trace or a checkpoint is read or written: ~5 MB of private memory a
    process)."""
    import subprocess
    import sys

    code = (
        "import sys, vmmsim.cluster.host_actor, vmmsim;"
        "print(sorted(m for m in sys.modules if m in ('vmmsim.api', 'vmmsim.cluster.cli',"
        " 'vmmsim.cluster.config', 'matplotlib', 'pyarrow')));"
        "print(vmmsim.ConfigError.__module__, 'vmmsim.api' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second = out.stdout.splitlines()
    assert first == "[]"
    assert second == "vmmsim.cluster.config_schema False"  # the exports resolve, on use
