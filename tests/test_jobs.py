"""The one job pool (mmrl.jobs) of the sweep and the demo: bounded, reported as each finishes,
stopped cleanly on Ctrl-C."""
import _thread
import threading
import time

import pytest

from mmrl.jobs import Job, JobPool


def test_at_most_one_job_per_slot_each_reported_with_its_slot():
    lock, running, most = threading.Lock(), [0], [0]

    def job(slot, i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return slot, i

    done = []
    JobPool(["0", "1"]).run([Job(i, job, (i,)) for i in range(6)], lambda k, r: done.append((k, r)))
    assert most[0] == 2 and sorted(k for k, _ in done) == list(range(6))
    assert all(r[1] == k and r[0] in ("0", "1") for k, r in done)


def test_an_error_starts_nothing_new_and_the_running_jobs_finish():
    started, done = [], []

    def job(i):
        started.append(i)
        if i == 0:
            raise ValueError("bad value")
        time.sleep(0.3)
        return i

    with pytest.raises(ValueError, match="bad value"):
        JobPool(2).run([Job(i, job, (i,)) for i in range(5)], lambda k, r: done.append(k))
    assert sorted(started) == [0, 1] and done == [1]


def test_ctrl_c_stops_the_running_jobs_reports_them_and_starts_no_more():
    started, done, stop, both = [], [], threading.Event(), threading.Barrier(2)

    def job(i):
        started.append(i)
        if i < 2:
            both.wait(10)
        if i == 0:  # Ctrl-C once both slots run a job
            _thread.interrupt_main()
        assert stop.wait(10)
        return f"stopped {i}"

    with pytest.raises(KeyboardInterrupt):
        JobPool(2, stop=stop.set, stop_wait_s=10).run([Job(i, job, (i,)) for i in range(5)],
                                                      lambda k, r: done.append((k, r)))
    assert sorted(started) == [0, 1] and sorted(done) == [(0, "stopped 0"), (1, "stopped 1")]


@pytest.mark.multiprocess
def test_ctrl_c_of_the_parent_alone_stops_a_worker_process():
    """A SIGTERM (as KeyboardInterrupt) reaches the parent only: its running workers get SIGINT."""
    t0 = time.monotonic()
    threading.Timer(1.0, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        with JobPool(1, processes=True) as pool:
            pool.run([Job(i, time.sleep, (60,)) for i in range(2)], lambda k, r: None)
    assert time.monotonic() - t0 < 30
