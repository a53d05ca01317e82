"""Sharing salts (``policy.share_salting``, ESX's Mem.ShareForceSalting): which VMs' pages
may share.  0 = all VMs (the 2002 paper), 1 = VMs of one ``sharing_group`` (the default:
all VMs share one group unless configured), 2 = each VM only with itself."""

from __future__ import annotations

import tomllib

import pytest
from runkit import small_config
from vmmsim.cluster.config import ConfigError, parse_config
from vmmsim.cluster.specs import salt, vm_spec

import vmmsim

#: Four VMs of one image on one roomy host: sharing, no reclamation.
ROOMY = small_config(1, 4, duration_s=20, host_mb=256)


def saved(mode: int, *overrides: str) -> float:
    r = vmmsim.run(
        tomllib.loads(ROOMY),
        overrides=[f"policy.share_salting={mode}", *overrides],
        backend="inprocess",
        check_invariants=True,  # includes: no frame shared outside its VM's salt
    )
    return r.summary["totals"]["saved_mb"]


def test_the_salt_of_each_mode() -> None:
    assert salt(0, "g", "v") == salt(0, "h", "w") == ""
    assert salt(1, "g", "v") == "g" and salt(1, "g", "w") == "g"
    assert salt(2, "g", "v") != salt(2, "g", "w")


def test_mode_2_keeps_only_sharing_within_a_vm() -> None:
    inter, intra = saved(1), saved(2)
    assert intra > 0  # each VM's own duplicates (its zero pages) still merge
    assert inter > 2 * intra  # identical images no longer merge across VMs


def test_mode_0_ignores_sharing_groups_and_mode_1_follows_them() -> None:
    groups = ["vms.busy.sharing_group=a", "vms.lazy.sharing_group=b"]
    assert saved(0, *groups) > saved(1, *groups) > saved(2, *groups)
    assert saved(0, *groups) == saved(1)  # mode 0: as if every VM were in one group


def test_the_spec_carries_the_salt() -> None:
    cfg = parse_config(tomllib.loads(ROOMY.replace("[policy]", "[policy]\nshare_salting = 2")))
    names = [v.name for v in cfg.vms]
    assert len({vm_spec(cfg, n).sharing_group for n in names}) == len(names)


def test_bad_modes_and_events_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"policy.share_salting: must be in \[0, 2\]"):
        parse_config(tomllib.loads(ROOMY.replace("[policy]", "[policy]\nshare_salting = 3")))
    ev = '[[events]]\ntime_s = 5\nset = { "policy.share_salting" = 2 }\n'
    with pytest.raises(ConfigError, match="cannot change during a run: a VM's sharing salt"):
        parse_config(tomllib.loads(small_config(extra=ev)))
