"""The job executor (local, in this process and in worker processes) and compare's sweeps on it:
results in job order whatever the number of workers, resume from the store, failures, Ctrl-C."""

import json
import math
import multiprocessing
import operator
import threading
import time

import pytest

from planner.cli import main
from planner.experiments.executor import (Executor, ExecutorError, Job, JobError, ResultStore, StoreMismatchError,
                                          run_jobs)


def _pow_jobs(n=7):
    # stdlib functions: importable in any worker, no test module to find
    return [Job(operator.pow, (i, 3), label=f"cube {i}") for i in range(n)]


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_results_come_in_job_order(n_jobs):
    assert run_jobs(_pow_jobs(), n_jobs=n_jobs) == [i ** 3 for i in range(7)]


def test_keys_follow_the_spec_not_the_label():
    a = Job(operator.pow, (2, 3), label="a")
    assert a.key == Job(operator.pow, (2, 3), label="b").key
    assert a.key != Job(operator.pow, (3, 2)).key
    assert a.key != Job(operator.add, (2, 3)).key
    # an explicit spec keys the job whatever its arguments
    assert Job(operator.pow, (2, 3), spec={"x": 1}).key == Job(operator.pow, (9, 9), spec={"x": 1}).key
    with pytest.raises(ExecutorError, match="same key"):
        run_jobs([a, Job(operator.pow, (2, 3))])


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_resume_skips_stored_jobs(tmp_path, n_jobs):
    jobs = _pow_jobs()
    store = ResultStore(tmp_path / "jobs")
    # a half-done run: jobs 0-2 stored, job 1 with a value the function cannot give, so a rerun
    # that recomputed it would show
    for job in jobs[:3]:
        store.save(job, job.args[0] ** 3)
    store.save(jobs[1], -999)
    seen = []
    out = run_jobs(jobs, n_jobs=n_jobs, store=tmp_path / "jobs",
                   on_result=lambda i, job, r, cached: seen.append((i, cached)))
    assert out == [0, -999, 8, 27, 64, 125, 216]
    assert sorted(seen) == [(i, i < 3) for i in range(7)]
    assert len(list((tmp_path / "jobs").glob("*.json"))) == 7 and not list((tmp_path / "jobs").glob(".*.tmp"))
    # a third run reads everything back
    assert run_jobs(jobs, n_jobs=n_jobs, store=tmp_path / "jobs") == out


def test_a_damaged_store_file_is_recomputed(tmp_path):
    job = Job(operator.pow, (5, 2))
    store = ResultStore(tmp_path)
    store.path(job).write_text("{not json")
    assert run_jobs([job], store=tmp_path) == [25]
    assert json.loads(store.path(job).read_text())["result"] == 25


def test_store_of_other_settings_is_refused(tmp_path):
    run_jobs(_pow_jobs(2), store=tmp_path, meta={"epochs": 1, "lr": 0.1})
    run_jobs(_pow_jobs(3), store=tmp_path, meta={"lr": 0.1, "epochs": 1})  # same settings: fine
    with pytest.raises(StoreMismatchError, match=r"epochs: 1 there, 2 here"):
        run_jobs(_pow_jobs(3), store=tmp_path, meta={"epochs": 2, "lr": 0.1})


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_job_that_raises_is_one_error_and_done_jobs_stay(tmp_path, n_jobs):
    jobs = [Job(math.sqrt, (float(x),), label=f"sqrt {x}") for x in (4, 9, -1)]
    with pytest.raises(JobError) as info:
        run_jobs(jobs, n_jobs=n_jobs, store=tmp_path)
    assert str(info.value) == "job sqrt -1 failed: ValueError: math domain error"
    assert info.value.job is jobs[2]
    store = ResultStore(tmp_path)
    if n_jobs == 1:  # in order: both earlier jobs finished first
        assert store.load(jobs[0]) == (True, 2.0) and store.load(jobs[1]) == (True, 3.0)
    assert not store.load(jobs[2])[0]
    assert not multiprocessing.active_children()
    # the good jobs alone finish, reusing what is stored
    assert run_jobs(jobs[:2], n_jobs=n_jobs, store=tmp_path) == [2.0, 3.0]


def test_ctrl_c_stops_the_workers(tmp_path):
    jobs = [Job(operator.pow, (1, 1))] + [Job(time.sleep, (30 + i,)) for i in range(3)]

    def interrupt(i, job, result, cached):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, n_jobs=2, store=tmp_path, on_result=interrupt)
    # terminated, not left to sleep their 30 s, and reaped before run_jobs returns: the pool's
    # manager thread (which joins the workers too) has finished, so nothing still reaps them
    # concurrently and no terminated worker is listed as a child any more (before the fix the
    # thread was still running after 18 of 20 such interrupts, racing the parent's own joins)
    from concurrent.futures.process import _ExecutorManagerThread

    assert not [t for t in threading.enumerate() if isinstance(t, _ExecutorManagerThread) and t.is_alive()]
    assert not multiprocessing.active_children()
    assert ResultStore(tmp_path).load(jobs[0]) == (True, 1)  # finished before the interrupt: kept


def test_executor_keeps_its_workers_between_runs():
    with Executor("local", 2) as ex:
        assert ex.run(_pow_jobs(3)) == [0, 1, 8]
        pool = ex._pool
        assert ex.run([Job(operator.add, (1, 2))] * 1 + [Job(operator.add, (2, 2))]) == [3, 4]
        assert ex._pool is pool
    assert not multiprocessing.active_children()


def test_bad_executor_arguments():
    with pytest.raises(ExecutorError, match="unknown executor"):
        Executor("dask")
    with pytest.raises(ExecutorError, match="positive integer"):
        Executor("local", 0)
    with pytest.raises(ExecutorError, match="ray executor only"):
        Executor("local", address="auto")


# ------------------------------------------------------------------------------ compare sweeps

SWEEP = ["compare", "--arch", "64,32,32,10", "--densities", "0.1,0.05", "--strategies", "lr-bound,uniform",
         "--seeds", "2", "--epochs", "2", "--finetune-epochs", "1", "--rank-model", "analytic", "--no-progress"]


def _rows(capsys, *extra):
    assert main([*SWEEP, "--json", *extra]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def serial():
    """The sweep in this process (--jobs 1), the reference of every other run."""
    pytest.importorskip("torch")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([*SWEEP, "--json"]) == 0
    return json.loads(buf.getvalue())


def test_compare_same_rows_with_two_workers(serial, capsys):
    data = _rows(capsys, "--executor", "local", "--jobs", "2")
    assert data == serial  # rows, dense rows and config, in the same order
    assert [(r["seed"], r["density"], r["strategy"]) for r in data["results"]] == [
        (s, d, st) for s in (0, 1) for d in (0.1, 0.05) for st in ("lr-bound", "uniform")]


def test_compare_interrupted_then_resumed(serial, capsys, tmp_path, monkeypatch):
    import planner.experiments.compare as cmp

    real, calls, armed = cmp.strategy_plan, [], [True]

    def flaky(strategy, *args, **kwargs):  # every pruned job plans once
        calls.append(strategy)
        if armed[0] and len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C half-way through the pruned runs
        return real(strategy, *args, **kwargs)

    monkeypatch.setattr(cmp, "strategy_plan", flaky)
    assert main([*SWEEP, "--out", str(tmp_path)]) == 130
    assert "interrupted" in capsys.readouterr().err
    stored = sorted(p.name for p in (tmp_path / "jobs").glob("*.json"))
    assert len(stored) == 1 + 2 + 3  # meta, two dense trainings, three pruned runs
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "jobs").glob("*.json")}
    calls.clear()
    armed[0] = False
    data = _rows(capsys, "--out", str(tmp_path))
    assert data == serial
    assert len(calls) == 8 - 3  # only the jobs not done before
    assert len(list((tmp_path / "jobs").glob("*.json"))) == 1 + 2 + 8
    for name, mtime in mtimes.items():  # stored jobs read, not rewritten
        assert (tmp_path / "jobs" / name).stat().st_mtime_ns == mtime
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"] == serial["results"]


def test_compare_job_failure_is_one_line_and_keeps_done_rows(serial, capsys, tmp_path, monkeypatch):
    import planner.experiments.compare as cmp

    real = cmp.strategy_plan

    def broken(strategy, *args, seed, **kwargs):
        if seed == 1 and strategy == "uniform":
            raise RuntimeError("disk on fire\nsecond line")
        return real(strategy, *args, seed=seed, **kwargs)

    monkeypatch.setattr(cmp, "strategy_plan", broken)
    assert main([*SWEEP, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "sparsity-planner: error: job seed 1: uniform at 0.1 failed: RuntimeError: disk on fire\n"
    assert len(list((tmp_path / "jobs").glob("*.json"))) == 1 + 2 + 5  # seed 0's four and seed 1's first
    monkeypatch.setattr(cmp, "strategy_plan", real)
    assert _rows(capsys, "--out", str(tmp_path)) == serial


def test_compare_refuses_an_out_of_other_settings(serial, capsys, tmp_path):
    _rows(capsys, "--out", str(tmp_path), "--seeds", "1", "--densities", "0.1")
    assert main([*SWEEP, "--out", str(tmp_path), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "holds results of other settings (epochs: 2 there, 3 here)" in err and err.count("\n") == 1


@pytest.mark.parametrize("args,message", [
    (["--address", "auto"], "--address is for --executor ray"),
    (["--jobs", "0"], "--jobs"),
    (["--executor", "dask"], "--executor"),
])
def test_compare_executor_option_errors(capsys, args, message):
    assert main([*SWEEP, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------ sensitivity sweeps

SENS = ["sensitivity", "--model", "examples.models:digits_mlp", "--dataset", "digits", "--samples", "120",
        "--steps", "1", "--min-density", "0.1", "--no-cache", "--json"]


def _table(capsys, *extra):
    assert main([*SENS, *extra]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def sens_serial():
    """The table measured in this process, one layer at a time (--jobs 1): the reference."""
    pytest.importorskip("torch")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(SENS) == 0
    return buf.getvalue()


def test_sensitivity_table_is_byte_identical_with_two_workers_and_any_chunk(sens_serial, capsys):
    table = json.loads(sens_serial)
    # 3 layers x 4 keep-counts (densities 1, 1/2, 1/4, 1/8: the halvings down to 0.1)
    assert [layer["keeps"] for layer in table["layers"]] == [[800, 1600, 3200, 6400], [1250, 2500, 5000, 10000],
                                                           [125, 250, 500, 1000]]
    assert _table(capsys, "--chunk", "1") == sens_serial
    assert _table(capsys, "--executor", "local", "--jobs", "2", "--chunk", "2") == sens_serial


def test_sensitivity_interrupted_then_resumed(sens_serial, capsys, tmp_path, monkeypatch):
    import planner.pruning.sensitivity as sens

    real, calls, armed = sens._evaluate, [], [True]

    def flaky(*args):  # one call per measured point (and one for the dense model)
        calls.append(1)
        if armed[0] and len(calls) == 8:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second layer
        return real(*args)

    monkeypatch.setattr(sens, "_evaluate", flaky)
    work = tmp_path / "work"
    assert main([*SENS, "--chunk", "2", "--work-dir", str(work)]) == 130
    assert "interrupted" in capsys.readouterr().err
    # jobs of 2 points: the dense job (call 1), the first layer's two (calls 2-5) and the second
    # layer's first (6-7) finished and are kept; its second (call 8) was in flight
    stored = {p.name: p.stat().st_mtime_ns for p in work.glob("*.json")}
    assert len(stored) == 1 + 1 + 2 + 1  # with the meta
    calls.clear()
    armed[0] = False
    assert _table(capsys, "--chunk", "2", "--work-dir", str(work)) == sens_serial
    assert len(calls) == 2 + 4  # only the points of the jobs not done before
    assert len(list(work.glob("*.json"))) == 1 + 1 + 3 * 2
    for name, mtime in stored.items():  # read back, not rewritten
        assert (work / name).stat().st_mtime_ns == mtime
    # another model (other weights) in the same directory is refused in one line
    assert main([*SENS, "--chunk", "2", "--work-dir", str(work), "--model-kwargs", '{"seed": 1}']) == 2
    err = capsys.readouterr().err
    assert "holds results of other settings" in err and err.count("\n") == 1


def test_sensitivity_job_failure_is_one_line(capsys, monkeypatch, tmp_path):
    import numpy as np

    import planner.pruning.sensitivity as sens

    # a worker process raising: labels the model has no class for
    np.save(tmp_path / "X.npy", np.zeros((20, 64), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.full(20, 12))
    args = ["sensitivity", "--model", "examples.models:digits_mlp", "--calibration", str(tmp_path / "X.npy"),
            "--labels", str(tmp_path / "y.npy"), "--steps", "1", "--min-density", "0.5", "--no-cache"]
    assert main([*args, "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert err == "sparsity-planner: error: label 12 is not a class of the model's 10 outputs\n"
    assert not multiprocessing.active_children()
    # any other exception names the job
    real, calls = sens._evaluate, []

    def broken(*args):
        calls.append(1)
        if len(calls) == 4:  # the first point of the first layer's second job
            raise RuntimeError("disk on fire\nsecond line")
        return real(*args)

    monkeypatch.setattr(sens, "_evaluate", broken)
    assert main([*SENS, "--chunk", "2"]) == 2
    err = capsys.readouterr().err
    assert err == "sparsity-planner: error: job layer fc1 at keeps 3200..6400 failed: RuntimeError: disk on fire\n"


@pytest.mark.parametrize("args,message", [
    (["--address", "auto"], "--address is for --executor ray"),
    (["--jobs", "0"], "--jobs"),
    (["--chunk", "0"], "--chunk"),
    (["--executor", "dask"], "--executor"),
])
def test_sensitivity_executor_option_errors(capsys, args, message):
    assert main([*SENS, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
