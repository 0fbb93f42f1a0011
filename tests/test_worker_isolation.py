"""Serving isolation: the worker's niceness, threads and cores (poseloop.worker.isolation), applied in a real
child process so the test process keeps its own priority."""

import json
import os
import subprocess
import sys

import pytest

from continual.settings import load_settings
from poseloop.worker.isolation import parse_cpus, plan


def test_cpu_specs():
    assert parse_cpus("auto", {0, 1}) == (1,)
    assert parse_cpus("auto", {0}) is None  # one core: nothing to leave to the API
    assert parse_cpus("all", {0, 1, 2}) is None
    assert parse_cpus("1,3-4", {0, 1, 2, 3, 4, 5}) == (1, 3, 4)
    assert parse_cpus("1-8", {0, 1, 2}) == (1, 2)
    with pytest.raises(ValueError, match="none of this machine's cores"):
        parse_cpus("7", {0, 1})


def test_bad_cpu_setting_is_refused_at_load():
    with pytest.raises(ValueError, match="worker_cpus"):
        load_settings(worker_cpus="first")


def test_default_plan_leaves_the_api_a_core(tmp_path):
    chosen = plan(load_settings(data_dir=tmp_path))
    cores = len(os.sched_getaffinity(0))
    assert chosen.nice == 10
    assert chosen.threads == max(1, cores - 1)
    assert chosen.cpus == (None if cores == 1 else tuple(sorted(os.sched_getaffinity(0)))[1:])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_a_worker_process_runs_nicer_on_its_cores():
    last = max(os.sched_getaffinity(0))
    code = (
        "import json, os, torch\n"
        "from continual.settings import load_settings\n"
        "from poseloop.worker.isolation import isolate\n"
        "before = os.nice(0)\n"
        f"isolate(load_settings(worker_nice=7, worker_threads=1, worker_cpus='{last}'))\n"
        "print(json.dumps([before, os.nice(0), torch.get_num_threads(), os.environ['OMP_NUM_THREADS'],\n"
        "                  sorted(os.sched_getaffinity(0))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    before, after, threads, omp, cores = json.loads(out.stdout.strip().splitlines()[-1])
    assert after == max(before, 7) and threads == 1 and omp == "1" and cores == [last]
