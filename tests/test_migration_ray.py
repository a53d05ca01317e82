"""Live migration over Ray: host actors send pages to each other through the object store.

Runs use the session's shared local Ray instance (``ray_session``) and must give files
byte-identical to the in-process reference.
"""

from __future__ import annotations

import pytest
from test_migration import MOVE, PRESSURE, TWO_HOSTS, config, writer
from vmmsim.cluster.config import parse_config
from vmmsim.cluster.host_pool import HostFailure
from vmmsim.cluster.runner import run

pytestmark = pytest.mark.ray

SCHEDULED = config(
    TWO_HOSTS
    + writer("fast", "h-0", 0.5, 20000)
    + writer("slow", "h-0", 0.01, 200)
    + MOVE.format(t=20, vm="fast")
    + MOVE.format(t=40, vm="slow"),
    migration="bandwidth_mb_s = 8",
)
PRESSURED = config(PRESSURE, duration=60, migration="bandwidth_mb_s = 20\npressure_s = 10")


def _cfg(text: str):
    import tomllib

    return parse_config(tomllib.loads(text))


@pytest.mark.parametrize("text", [SCHEDULED, PRESSURED], ids=["scheduled", "pressure"])
def test_ray_equals_inprocess_byte_for_byte(ray_session, tmp_path, text):
    a = run(_cfg(text), tmp_path / "inproc", backend="inprocess", quiet=True)
    b = run(_cfg(text), tmp_path / "ray", backend="ray", quiet=True)
    assert a["migrations"]["completed"] >= 1
    assert a == b
    for name in ("metrics.parquet", "migrations.parquet"):
        assert (tmp_path / "inproc" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()


def test_gather_names_the_failing_host_even_upstream_in_a_chain(ray_session):
    from vmmsim.cluster.ray_runtime import RayPool

    pool = RayPool(_cfg(SCHEDULED).to_dict(), timeout_s=60)
    try:
        with pytest.raises(HostFailure, match=r"host h-0 failed .*KeyError"):
            pool.gather([pool.submit("h-0", "mig_allocated", "nope")])
        bad = pool.submit("h-0", "mig_collect", "nope", True, 0, 1)  # fails on h-0 ...
        with pytest.raises(HostFailure, match="KeyError"):  # ... seen where gathered
            pool.gather([pool.submit("h-1", "mig_known", "nope", bad)])
    finally:
        pool.close()
