"""``bench/peak_memory.py``'s memory-over-time series, kept honest on a small command
whose memory grows at a known rate and one whose memory stays put (the day run's "memory
flat" is measured with it; the run itself is minutes, not a CI test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROW = (
    "import time\nx = []\nfor _ in range({n}):\n"
    "    x.append(bytearray({mb} * 2**20))\n    x[-1][::4096] = b'x' * len(x[-1][::4096])\n"
    "    time.sleep(0.05)\n"
)


def _measure(tmp_path: Path, mb: int) -> tuple[dict, list[dict]]:
    series = tmp_path / f"series{mb}.jsonl"
    cmd = [sys.executable, str(ROOT / "bench" / "peak_memory.py"), "--series", str(series)]
    cmd += ["--every", "0.1", "--", sys.executable, "-c", GROW.format(n=40, mb=mb)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(r.stderr.strip().splitlines()[-1])
    return report, [json.loads(line) for line in series.read_text().splitlines()]


def test_series_and_growth_of_a_growing_and_a_flat_process(tmp_path: Path) -> None:
    grows, samples = _measure(tmp_path, 2)  # +2 MB every ~0.05 s: ~1,000+ MB per minute
    assert len(samples) >= 5 and all("driver" in s["pss_mb"] for s in samples)
    ts = [s["t"] for s in samples]
    assert ts == sorted(ts)
    assert samples[-1]["pss_mb"]["driver"] > samples[0]["pss_mb"]["driver"] + 10
    assert grows["pss_growth_mb_per_min"]["driver"] > 300
    flat, _ = _measure(tmp_path, 0)
    assert abs(flat["pss_growth_mb_per_min"]["driver"]) < 30
