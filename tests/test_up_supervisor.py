"""`poseloop up`'s supervisor: a worker that keeps dying is given up on while the API keeps serving; only an API
that keeps dying stops the stack (real child processes, short backoff)."""

from __future__ import annotations

import os
import sys
import threading
import time

from poseloop.up import Child, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
CRASHER = [sys.executable, "-c", "raise SystemExit(3)"]


def _run(supervisor: Supervisor, until, timeout_s: float = 60.0) -> list[tuple[str, str]]:
    """Run the supervisor in this (main) thread until `until()` holds, then stop it; returns what it said."""
    said: list[tuple[str, str]] = []
    supervisor.say = lambda name, line: said.append((name, line.strip()))  # type: ignore[method-assign]

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not supervisor.stopping.is_set() and time.monotonic() < deadline and not until():
            time.sleep(0.05)
        supervisor.stopping.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    supervisor.run()
    watcher.join()
    return said


def test_a_crash_looping_worker_is_given_up_and_the_api_keeps_running() -> None:
    api, worker = Child("api", SLEEPER, essential=True), Child("worker", CRASHER)
    supervisor = Supervisor([api, worker], dict(os.environ), max_restarts=2, backoff_cap_s=0.05)
    api_alive_when_given_up: list[bool] = []

    def given_up() -> bool:
        if worker.given_up and not api_alive_when_given_up:
            api_alive_when_given_up.append(api.proc is not None and api.proc.poll() is None)
        return worker.given_up

    said = _run(supervisor, given_up)
    assert api_alive_when_given_up == [True]
    assert ("up", "worker keeps dying (exit 3); giving up on it, the API keeps serving") in said
    assert not any("stopping the stack" in line for _, line in said)


def test_an_api_that_keeps_dying_stops_the_stack() -> None:
    api, worker = Child("api", CRASHER, essential=True), Child("worker", SLEEPER)
    supervisor = Supervisor([api, worker], dict(os.environ), max_restarts=2, backoff_cap_s=0.05)
    said = _run(supervisor, lambda: False)
    assert ("up", "api keeps dying (exit 3); stopping the stack") in said
    assert worker.proc is not None and worker.proc.poll() is not None, "the worker was stopped with the stack"
