"""Access patterns: determinism, state round trips, each pattern's shape, Params checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from vmmsim.cluster.config import ConfigError, parse_config
from vmmsim.workloads import registry
from vmmsim.workloads.batch import BatchParams
from vmmsim.workloads.content import nonzero_keys
from vmmsim.workloads.fileserver import FileserverParams
from vmmsim.workloads.images import BUILTIN_IMAGES, BootLayout, ImageSpec
from vmmsim.workloads.patterns import Accesses, SteadyParams, WorkloadEnv
from vmmsim.workloads.phased import PhasedParams
from vmmsim.workloads.trace import TraceParams, write_trace

N_PAGES = 512  # 2 MB VMs


def env(image: str | ImageSpec = "linux", n: int = N_PAGES, seed: int = 1) -> WorkloadEnv:
    img = BUILTIN_IMAGES[image] if isinstance(image, str) else image
    return WorkloadEnv(n, 4096, 1.0, seed, img, BootLayout.for_image(img, n))


def rng(key: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(5, spawn_key=(key,))))


def make(kind: str, params=None, e: WorkloadEnv | None = None, key: int = 0):
    cls = registry.get(kind)
    return cls(params if params is not None else cls.Params(), e or env(), rng(key))


def stream(w, steps: range) -> list[tuple]:
    out = []
    for k in steps:
        a = w.step(k)
        out.append((a.reads.tolist(), a.writes.tolist(), a.write_keys.tolist(), a.disk_reads))
    return out


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.arrow"
    tick = np.array([0, 0, 1, 3, 3, 3])
    ppn = np.array([5, 9, 5, 7, 8, 400])
    isw = np.array([True, False, False, True, False, True])
    key = np.array([11, 0, 0, 22, 0, 0], dtype=np.uint64)
    write_trace(str(path), tick, ppn, isw, key)
    return path


def all_kinds(trace_path) -> dict:
    return {
        "idle": None,
        "steady": SteadyParams(wss_mb=1.0, accesses_per_s=300),
        "steady-skew": SteadyParams(wss_mb=1.0, hot_fraction=0.2, hot_weight=0.8),
        "phased": PhasedParams(phases=((3, 0.5), (2, 1.5))),
        "fileserver": FileserverParams(files_mb=0.5, dirty_mb=0.2, accesses_per_s=200),
        "batch": BatchParams(program_mb=0.5, heap_mb=0.5, load_s=3),
        "trace": TraceParams(path=str(trace_path)),
    }


@pytest.mark.parametrize(
    "name", ["idle", "steady", "steady-skew", "phased", "fileserver", "batch", "trace"]
)
def test_same_seed_same_stream_and_state_round_trip(name, trace_file):
    params = all_kinds(trace_file)[name]
    kind = name.split("-")[0]
    a, b = make(kind, params), make(kind, params)
    assert stream(a, range(6)) == stream(b, range(6))
    state = json.loads(json.dumps(a.get_state()))  # JSON-able, no pickle
    rest = stream(a, range(6, 12))
    fresh = make(kind, params)  # restore = construct fresh + set_state
    fresh.set_state(state)
    assert stream(fresh, range(6, 12)) == rest


def test_other_generator_other_stream():
    a, b = make("steady", key=0), make("steady", key=1)
    assert stream(a, range(1, 4)) != stream(b, range(1, 4))


def test_steady_defaults_reproduce_the_uniform_stream():
    """hot_fraction = 1 (default) makes exactly the draws the original pattern made."""
    e, r = env(), rng()
    wss = np.sort(r.choice(e.n_pages, size=e.pages(16.0), replace=False)).astype(np.int64)
    pool = wss[wss >= e.layout.data_start]
    w = make("steady", SteadyParams(wss_mb=16.0))
    for k in range(1, 5):
        n = int(r.poisson(float(len(wss))))
        n_w = int(r.binomial(n, 0.1))
        reads = wss[r.integers(0, len(wss), size=n - n_w)]
        writes = pool[r.integers(0, len(pool), size=n_w)]
        keys = nonzero_keys(r, n_w)
        a = w.step(k)
        assert np.array_equal(a.reads, reads) and np.array_equal(a.writes, writes)
        assert np.array_equal(a.write_keys, keys)


def test_steady_hot_cold_skew():
    w = make(
        "steady",
        SteadyParams(
            wss_mb=1.0, hot_fraction=0.2, hot_weight=0.8, accesses_per_s=5000, write_fraction=0.0
        ),
    )
    reads = np.concatenate([w.step(k).reads for k in range(1, 4)])
    hot_share = np.isin(reads, w.hot).mean()
    assert 0.77 < hot_share < 0.83
    assert len(w.hot) == round(0.2 * len(w.wss))


def test_phased_steps_its_working_set():
    p = PhasedParams(phases=((3, 0.5), (2, 1.5)), touch_rate=20.0)
    w = make("phased", p)
    assert [w.wss_pages(k) for k in range(7)] == [128, 128, 128, 384, 384, 128, 128]
    for k in (1, 2, 4):
        a = w.step(k)
        touched = np.union1d(a.reads, a.writes)
        assert np.isin(touched, w.order[: w.wss_pages(k)]).all()
    big = np.union1d(w.step(3).reads, w.step(4).reads)
    assert len(big) > 300  # the larger set is really touched
    held = make("phased", PhasedParams(phases=((3, 0.5), (2, 1.5)), repeat=False))
    assert [held.wss_pages(k) for k in (4, 5, 50)] == [384, 384, 384]


def test_batch_program_pages_identical_across_vms():
    p = BatchParams(program="gcc", program_mb=0.5, heap_mb=0.5, load_s=0)
    a, b = make("batch", p, key=0), make("batch", p, key=1)
    other = make("batch", BatchParams(program="lisp", program_mb=0.5, heap_mb=0.5, load_s=0))

    def program_writes(w):
        acc = w._accesses(0)
        prog = (acc.writes >= w.prog_start) & (acc.writes < w.prog_start + w.n_prog)
        return acc.writes[prog], acc.write_keys[prog]

    pa_, ka = program_writes(a)
    pb, kb = program_writes(b)
    assert len(pa_) == 128 and np.array_equal(pa_, pb) and np.array_equal(ka, kb)
    assert not np.intersect1d(ka, program_writes(other)[1]).size
    # heap writes are private: fresh keys per VM
    wa, wb = a.step(2), b.step(2)
    assert not np.intersect1d(wa.write_keys, wb.write_keys).size


def test_batch_loads_program_over_load_s():
    w = make("batch", BatchParams(program_mb=0.5, heap_mb=0.5, load_s=4))
    assert [w.loaded(k) for k in range(5)] == [32, 64, 96, 128, 128]


def test_fileserver_reads_clean_files_writes_only_dirty_set():
    e = env(ImageSpec("fs", shared_fraction=0.5, zero_fraction=0.05))
    p = FileserverParams(files_mb=0.75, dirty_mb=0.1, accesses_per_s=2000, warmup_s=0)
    w = make("fileserver", p, e)
    w.step(0)
    accs = [w.step(k) for k in range(1, 6)]
    reads = np.concatenate([a.reads for a in accs])
    writes = np.concatenate([a.writes for a in accs])
    assert (reads < e.layout.n_image).all()  # file pages = image pages: clean
    assert np.isin(writes, w.dirty).all() and len(w.dirty) == 25
    assert len(writes) < 0.1 * (len(reads) + len(writes))
    assert w.n_cached == 192  # 0.75 MB of files fit in the 256-page image region


def test_fileserver_disk_reads_when_memory_smaller_than_files():
    e = env(ImageSpec("fs", shared_fraction=0.25, zero_fraction=0.0))  # 128 image pages
    w = make("fileserver", FileserverParams(files_mb=1.0, accesses_per_s=4000, warmup_s=0), e)
    assert w.n_files == 256 and w.n_cached == 128
    accs = [w.step(k) for k in range(1, 4)]
    misses = sum(a.disk_reads for a in accs)
    reads = sum(len(a.reads) for a in accs)
    assert misses > 0
    assert abs(misses / (misses + reads) - (1 - w.cached_fraction)) < 0.03


def test_fileserver_warmup_loads_popular_files_first():
    e = env(ImageSpec("fs", shared_fraction=0.5, zero_fraction=0.1))
    w = make("fileserver", FileserverParams(warmup_s=4, accesses_per_s=0), e)
    a0 = w.step(0)
    assert w.loaded(0) == 64 and np.isin(w.file_pages[:64], a0.writes).all()
    assert not np.isin(w.file_pages[64:], a0.writes).any()
    zero = np.arange(e.layout.n_image, e.layout.data_start)
    assert np.isin(zero, a0.writes).all()
    a1 = w.step(1)
    assert np.array_equal(np.sort(a1.writes), np.sort(w.file_pages[64:128]))


def test_trace_replays_its_rows_exactly(trace_file):
    w = make("trace", TraceParams(path=str(trace_file), boot=False))
    got = [w.step(k) for k in range(5)]
    assert got[0].writes.tolist() == [5] and got[0].write_keys.tolist() == [11]
    assert got[0].reads.tolist() == [9]
    assert got[1].reads.tolist() == [5] and not len(got[1].writes)
    assert got[2].count == 0 and got[4].count == 0
    assert got[3].writes.tolist() == [7, 400] and got[3].write_keys.tolist() == [22, 0]
    booted = make("trace", TraceParams(path=str(trace_file))).step(0)
    assert booted.count > 2  # image boot + the trace's tick 0


def _vm_toml(workload: str, memory_mb: float = 2) -> str:
    return f"""
[[hosts]]
name = "h"
memory_mb = 64
swap_mb = 64
[[vms]]
name = "a"
memory_mb = {memory_mb}
[vms.workload]
{workload}
"""


def load(text: str):
    import tomllib

    return parse_config(tomllib.loads(text))


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ('kind = "steady"\nhot_fraction = 0.0', "hot_fraction: must be in (0, 1] (got 0)"),
        ('kind = "steady"\nwrite_fraction = 1.5', "write_fraction: must be in [0, 1] (got 1.5)"),
        ('kind = "idle"\naccesses_per_s = -1.0', "accesses_per_s: must be >= 0 (got -1)"),
        ('kind = "phased"\nphases = []', "phases: must hold at least one"),
        ('kind = "phased"\nphases = [[0, 4]]', "phases: phase 0 needs duration_s > 0"),
        ('kind = "phased"\nphases = [[10, 4, 5]]', "phases[0]: expected an array of 2 values"),
        ('kind = "phased"\nphases = [["a", 4]]', "phases[0][0]: expected a float"),
        ('kind = "fileserver"\nzipf_s = -1.0', "zipf_s: must be in [0, 4] (got -1)"),
        ('kind = "batch"\nprogram = "a b"', "program: must be a non-empty name"),
        ('kind = "trace"', "path: a trace file is required"),
        ('kind = "trace"\npath = "/nonexistent.arrow"', "path: /nonexistent.arrow: cannot read"),
    ],
)
def test_params_validation_errors(workload, message):
    with pytest.raises(ConfigError) as e:
        load(_vm_toml(workload))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_trace_checked_against_vm_size_and_schema(trace_file, tmp_path):
    with pytest.raises(ConfigError, match=r"workload.path: .*ppn 400 >= the VM's 256 pages"):
        load(_vm_toml(f'kind = "trace"\npath = "{trace_file}"', memory_mb=1))
    cfg = load(_vm_toml(f'kind = "trace"\npath = "{trace_file}"', memory_mb=2))
    assert cfg.vm("a").workload.params.path == str(trace_file)
    import pyarrow as pa

    bad = tmp_path / "bad.arrow"
    t = pa.table({"tick": pa.array([0], pa.int32()), "ppn": [1], "is_write": [True], "key": [1]})
    with pa.OSFile(str(bad), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t)
    with pytest.raises(ConfigError, match="column tick must be int64"):
        load(_vm_toml(f'kind = "trace"\npath = "{bad}"'))


def test_phases_round_trip_through_config_dict():
    from vmmsim.cluster.config import config_from_dict

    cfg = load(_vm_toml('kind = "phased"\nphases = [[10, 1], [5.5, 2]]'))
    assert cfg.vm("a").workload.params.phases == ((10.0, 1.0), (5.5, 2.0))
    again = config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.config_hash() == cfg.config_hash()


def test_accesses_concat_keeps_disk_reads():
    a = Accesses(disk_reads=2)
    assert Accesses.concat(a, Accesses(disk_reads=3)).disk_reads == 5


def test_batch_vms_share_program_pages_on_a_host(tmp_path):
    """End to end: same program -> its pages merge across VMs; other programs do not."""
    from vmmsim.cluster.runner import run

    def shared(prog_b: str) -> float:
        text = f"""
[simulation]
duration_s = 12
content_bytes = 64
[policy]
share_scan_vm_pages_per_s = 1000
share_scan_host_pages_per_s = 4000
vm_overhead_mb = 0
[[hosts]]
name = "h"
memory_mb = 32
swap_mb = 8
[[vms]]
name = "a"
memory_mb = 4
image = "blank"
[vms.workload]
kind = "batch"
program = "gcc"
program_mb = 1
heap_mb = 1
load_s = 0
classes = [["all", 1.0, 1.0, 0.0, "program"]]  # every page identical (not graded)
[[vms]]
name = "b"
memory_mb = 4
image = "blank"
[vms.workload]
kind = "batch"
program = "{prog_b}"
program_mb = 1
heap_mb = 1
load_s = 0
classes = [["all", 1.0, 1.0, 0.0, "program"]]
"""
        cfg = load(text)
        s = run(cfg, tmp_path / prog_b, backend="inprocess", quiet=True)
        return s["totals"]["saved_mb"]

    assert shared("gcc") >= 0.95  # ~1 MB of program pages saved
    assert shared("lisp") < 0.1
