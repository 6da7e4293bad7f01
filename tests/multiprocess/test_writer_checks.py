"""``parallel.writer_checks`` with 2 real processes joined by ``jax.distributed``: a check
that fails on process 0 (a cached-stage mismatch, say) stops process 1 with a clear error
instead of leaving it waiting at the next collective."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multiprocess.test_multiprocess import _free_port

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import os, sys
os.environ["JAX_NUM_CPU_DEVICES"] = "1"
os.environ["JAX_PLATFORMS"] = "cpu"
import ml_collections
from recrl import parallel
mode, pid, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = ml_collections.ConfigDict(dict(parallel.CONFIG_FIELDS))
cfg.update(distributed=True, coordinator_address=f"127.0.0.1:{port}", num_processes=2,
           process_id=pid)
parallel.startup(cfg)
def check():
    if mode == "fail":
        raise ValueError("stage 'sim' was produced with another config")
    return 7
print("returned", parallel.writer_checks("cached-stage guard", check), flush=True)
parallel.barrier("after")  # without writer_checks, process 1 would wait here for ever
print("past the barrier", flush=True)
"""


@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_a_failed_check_on_process_0_stops_every_process(mode):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("XLA_FLAGS", None)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", _SCRIPT, mode, str(pid), str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for pid in range(2)]
    try:
        logs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if mode == "ok":
        assert [p.returncode for p in procs] == [0, 0], logs
        assert "returned 7" in logs[0] and "returned None" in logs[1], logs
        assert all("past the barrier" in log for log in logs), logs
    else:
        assert procs[0].returncode != 0 and procs[1].returncode != 0, logs
        assert "ValueError: stage 'sim' was produced with another config" in logs[0], logs[0]
        assert "WriterCheckFailed: process 0 stopped at 'cached-stage guard'" in logs[1], logs[1]
        assert not any("past the barrier" in log for log in logs), logs
