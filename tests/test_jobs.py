"""The job table: idempotency, single flight, leases (worker death), chunk release, cancel, orphan sweep."""

import sqlite3
import threading

import pytest

from continual.jobs import JobNotFound, JobStore, LeaseLost


class FakeClock:
    """Lease time that moves only when a test says so: no sleeps, no race with a slow box."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(tmp_path, clock):
    return JobStore(tmp_path / "jobs.db", clock=clock)


def test_idempotency_key_and_single_flight(store):
    first, created = store.submit("retrain", "m", {"iterations": 5}, "alice", idempotency_key="k1")
    assert created and first.state == "queued"
    again, created = store.submit("retrain", "m", {}, "bob", idempotency_key="k1")
    assert not created and again.id == first.id
    other, created = store.submit("retrain", "m", {}, "bob")  # no key: still the one queued job of this model
    assert not created and other.id == first.id
    assert store.submit("retrain", "other-model", {}, "bob")[1]


def test_concurrent_submits_make_one_job(store):
    ids, barrier = [], threading.Barrier(8)

    def submit():
        barrier.wait()
        ids.append(store.submit("retrain", "m", {}, "t")[0].id)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(store.list()) == 1


def test_lease_expiry_lets_another_worker_take_over(store, clock):
    job, _ = store.submit("retrain", "m", {}, "t")
    assert store.claim("w1", lease_s=0.3).id == job.id
    assert store.claim("w2", lease_s=0.3) is None  # w1 holds a live lease
    store.heartbeat(job.id, "w1", 0.3, progress={"step": 3})
    clock.advance(0.4)  # w1 "died": no heartbeat
    taken = store.claim("w2", lease_s=10)
    assert taken.id == job.id and taken.attempts == 2 and taken.progress == {"step": 3}
    with pytest.raises(LeaseLost):
        store.heartbeat(job.id, "w1", 10)
    with pytest.raises(LeaseLost):
        store.finish(job.id, "w1", "succeeded")
    done = store.finish(job.id, "w2", "succeeded", result={"gate": "ok"})
    assert done.state == "succeeded" and done.result == {"gate": "ok"}
    assert any("resuming" in line for line in store.logs(job.id))


def test_release_makes_the_job_claimable_at_once(store):
    job, _ = store.submit("retrain", "m", {}, "t")
    store.claim("w1", lease_s=100)
    store.release(job.id, "w1")
    assert store.claim("w2", lease_s=100).id == job.id


def test_cancel_queued_and_running(store):
    job, _ = store.submit("retrain", "m", {}, "t")
    assert store.request_cancel(job.id, "ops").state == "cancelled"
    job2, created = store.submit("retrain", "m", {}, "t")
    assert created  # the cancelled job no longer blocks a new one
    store.claim("w", lease_s=100)
    assert store.request_cancel(job2.id, "ops").cancel_requested
    assert store.heartbeat(job2.id, "w", 100) is True  # the worker learns it at its next heartbeat
    with pytest.raises(JobNotFound):
        store.request_cancel("nope", "ops")


def test_orphans_are_expired_running_and_stale_queued_jobs(store, clock):
    job, _ = store.submit("retrain", "m", {}, "t")
    assert store.orphans(queued_for_s=60) == []
    assert [j.id for j in store.orphans(queued_for_s=0)] == [job.id]
    store.claim("w", lease_s=0.1)
    clock.advance(0.2)
    assert [j.id for j in store.orphans(queued_for_s=60)] == [job.id]


def test_log_tail_is_bounded(store):
    job, _ = store.submit("retrain", "m", {}, "t")
    store.claim("w", lease_s=100)
    for i in range(300):
        store.heartbeat(job.id, "w", 100, log=f"line {i}")
    tail = store.logs(job.id, tail=500)
    assert len(tail) == 200 and tail[-1].endswith("line 299")


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    """Switching to WAL needs an exclusive lock and SQLite refuses it at once (no busy wait) while another
    connection holds one: the old one-shot PRAGMA failed ~4% of the time with 4 openers (CI saw it)."""
    import threading

    from core.sqlite import open_wal

    for round_ in range(60):
        path, barrier, errors = tmp_path / f"db{round_}.sqlite", threading.Barrier(4), []

        def open_it(path=path, barrier=barrier, errors=errors):
            barrier.wait()
            try:
                open_wal(path, "CREATE TABLE IF NOT EXISTS t (a INTEGER);")
            except Exception as err:
                errors.append(err)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
