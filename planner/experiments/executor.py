"""Run independent jobs on this machine or on Ray, resumably, results in job order.

A :class:`Job` is a picklable call (a module-level function and its arguments) with a *spec*:
a JSON-able description of everything its result depends on. The job's key is the SHA-256 of
the function's name and its spec; :func:`run_jobs` runs a list of jobs and returns their results
in the list's order, whatever order they finished in and whichever executor ran them:

``local``  ``n_jobs=1``: one after the other in this process. ``n_jobs>1``: that many worker
           processes of this machine (``concurrent.futures.ProcessPoolExecutor``, started by
           *spawn*: fresh interpreters, no state inherited from the caller).
``ray``    Ray tasks (``ray.remote``, one CPU each): on the Ray instance this process is already
           connected to, else on the cluster at ``address`` (``"auto"``, ``"HOST:PORT"``,
           ``"ray://HOST:10001"``), else on a new local instance with ``n_jobs`` CPUs (default:
           all). ``n_jobs`` also caps the tasks in flight.

``store`` (a directory) makes the run resumable: every finished job is written there at once,
atomically, as ``<key>.json``, and a job whose file is there is not run again; so an interrupted
run (Ctrl-C, a killed worker, a job that raised) loses at most the jobs in flight. Results then
must be JSON values, and every result, fresh or read back, is returned as its JSON round trip,
so a resumed run returns exactly what an uninterrupted one does. ``meta`` (a JSON-able dict) is
written to ``meta.json`` there on the first run; a later run with other ``meta`` raises
:class:`StoreMismatchError` instead of mixing results of different settings.

A job that raises ends the run with :class:`JobError` (naming the job and the exception); the
results finished before it stay in ``store``. Ctrl-C (``KeyboardInterrupt``) stops every worker
(local processes are terminated, Ray tasks cancelled) before it propagates. ``shared`` is one
object handed to every job as its first argument, sent to each worker once (a process pool's
initializer, Ray's object store) rather than with every job: data sets, a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from planner.errors import PlannerError

EXECUTORS = ("local", "ray")


class _NoShared:
    """No shared object; unpickles to the same module-level instance in every worker."""

    def __reduce__(self):
        return "_NO_SHARED"


_NO_SHARED = _NoShared()


class ExecutorError(PlannerError):
    """The executor cannot run the jobs (unknown executor, Ray missing or unreachable, a worker died)."""


class JobError(ExecutorError):
    """A job raised. ``job`` is the :class:`Job`; ``cause`` the exception (or its text)."""

    def __init__(self, message: str, job: "Job | None" = None, cause: BaseException | str | None = None):
        super().__init__(message)
        self.job, self.cause = job, cause


class StoreMismatchError(ExecutorError, ValueError):
    """The store directory holds the results of a run with other settings."""


def _canonical(value) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except TypeError as exc:
        raise ExecutorError(f"a job spec must be JSON (numbers, strings, lists, dicts): {exc}") from None


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


@dataclass(frozen=True)
class Job:
    """One call ``fn(*args, **kwargs)`` (``fn(shared, *args, **kwargs)`` when :func:`run_jobs`
    gets ``shared``). ``spec`` keys it (default: ``args`` and ``kwargs``, which must then be JSON);
    ``label`` names it in progress and errors."""

    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    spec: Any = None
    label: str = ""

    @property
    def key(self) -> str:
        spec = self.spec if self.spec is not None else {"args": list(self.args), "kwargs": self.kwargs}
        text = _canonical({"fn": _qualname(self.fn), "spec": spec})
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def name(self) -> str:
        return self.label or f"{_qualname(self.fn)} {self.key[:12]}"


# ------------------------------------------------------------------------------ the store


class ResultStore:
    """``<key>.json`` per finished job in ``directory``, and the run's ``meta.json``."""

    def __init__(self, directory, meta: dict | None = None):
        from planner.fileio import atomic_write_text, check_writable_dir

        self.directory = check_writable_dir(directory, "results directory")
        self.meta = meta
        if meta is None:
            return
        path = self.directory / "meta.json"
        wanted = json.loads(_canonical(meta))
        if path.exists():
            try:
                there = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StoreMismatchError(f"{path}: unreadable ({exc}); delete {self.directory} to start over") from None
            if there != wanted:
                raise StoreMismatchError(f"{self.directory} holds results of other settings "
                                         f"({_first_difference(there, wanted)}); use another directory, or "
                                         f"delete {self.directory} to start over")
        else:
            atomic_write_text(path, json.dumps(wanted, indent=1, sort_keys=True) + "\n")

    def path(self, job: Job) -> Path:
        return self.directory / f"{job.key}.json"

    def load(self, job: Job):
        """``(True, result)`` when the job's file is there and whole, else ``(False, None)``; a
        file that does not parse or names another key is ignored (the job runs again)."""
        path = self.path(job)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return False, None
        except (OSError, ValueError):
            return False, None
        if not isinstance(record, dict) or record.get("key") != job.key or "result" not in record:
            return False, None
        return True, record["result"]

    def save(self, job: Job, result):
        """Write the job's result atomically; returns it as read back (its JSON round trip)."""
        from planner.fileio import atomic_write_text

        try:
            text = json.dumps({"key": job.key, "label": job.label, "spec": job.spec, "result": result})
        except TypeError as exc:
            raise ExecutorError(f"job {job.name}: its result is not JSON, so it cannot be stored: {exc}") from None
        atomic_write_text(self.path(job), text + "\n")
        return json.loads(text)["result"]

    def done(self) -> set[str]:
        return {p.stem for p in self.directory.glob("*.json") if p.name != "meta.json"}


def _first_difference(there, here, where: str = "") -> str:
    if isinstance(there, dict) and isinstance(here, dict):
        for k in sorted(set(there) | set(here)):
            if there.get(k, "<absent>") != here.get(k, "<absent>"):
                return _first_difference(there.get(k, "<absent>"), here.get(k, "<absent>"), f"{where}{k}")
    return f"{where or 'settings'}: {json.dumps(there)} there, {json.dumps(here)} here"


# ------------------------------------------------------------------------------ running


class Executor:
    """Where jobs run; keeps its worker processes (or its Ray connection) from one :meth:`run`
    to the next, so a sweep in phases (e.g. dense trainings, then the runs that need them) starts
    its workers once. Use it as a context manager, or call :meth:`close`."""

    def __init__(self, executor: str = "local", n_jobs: int | None = None, address: str | None = None,
                 shared=_NO_SHARED):
        if executor not in EXECUTORS:
            raise ExecutorError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
        if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1):
            raise ExecutorError(f"n_jobs must be a positive integer, got {n_jobs!r}")
        if address is not None and executor != "ray":
            raise ExecutorError("an address is for the ray executor only")
        self.executor, self.n_jobs, self.address, self.shared = executor, n_jobs, address, shared
        self._pool = None
        self._ray = None  # (ray module, remote function, shared ref, whether we started Ray)

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close(abort=exc[0] is not None)

    def close(self, abort: bool = False) -> None:
        """Stop the workers (at once when ``abort``) and leave a Ray instance this started."""
        if self._pool is not None:
            _stop_pool(self._pool, abort)
            self._pool = None
        if self._ray is not None:
            ray, _, _, started = self._ray
            self._ray = None
            if started:
                ray.shutdown()

    def run(self, jobs: Sequence[Job], *, store=None, meta: dict | None = None,
            on_result: Callable[[int, Job, Any, bool], None] | None = None) -> list:
        """The results of ``jobs``, in their order. ``store``: a directory or a
        :class:`ResultStore` (resume). ``on_result(index, job, result, from_store)`` is called for
        every job read from the store, then after every job run, in the order they finish."""
        jobs = list(jobs)
        keys = [job.key for job in jobs]
        if len(set(keys)) != len(keys):
            raise ExecutorError("two jobs have the same key (the same function and spec)")
        if store is not None and not isinstance(store, ResultStore):
            store = ResultStore(store, meta)
        results: list = [None] * len(jobs)
        todo: list[int] = []
        for i, job in enumerate(jobs):
            found, value = store.load(job) if store is not None else (False, None)
            if found:
                results[i] = value
                if on_result is not None:
                    on_result(i, job, value, True)
            else:
                todo.append(i)

        def finish(i: int, value) -> None:
            results[i] = store.save(jobs[i], value) if store is not None else value
            if on_result is not None:
                on_result(i, jobs[i], results[i], False)

        if not todo:
            return results
        try:
            if self.executor == "ray":
                self._run_ray(jobs, todo, finish)
            elif (self.n_jobs or 1) == 1:
                for i in todo:
                    finish(i, _call_here(jobs[i], self.shared))
            else:
                self._run_pool(jobs, todo, finish)
        except BaseException:
            self.close(abort=True)  # Ctrl-C, a failed job: stop every worker now
            raise
        return results

    # -------------------------------------------------------------- local processes
    def _run_pool(self, jobs, todo, finish) -> None:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.shared,))
        pending = {self._pool.submit(_pool_call, jobs[i].fn, jobs[i].args, jobs[i].kwargs): i for i in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            failure = None
            for future in sorted(done, key=pending.get):  # job order among those finished together
                i = pending.pop(future)
                exc = future.exception()
                if exc is None:
                    finish(i, future.result())
                elif failure is None:
                    failure = (i, exc)
            if failure is not None:
                i, exc = failure
                if isinstance(exc, BrokenProcessPool):
                    raise ExecutorError(f"a worker process died (killed, or out of memory) while running job "
                                        f"{jobs[i].name}") from None
                raise _failure(jobs[i], exc) from exc

    # -------------------------------------------------------------- Ray
    def _connect_ray(self):
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise ExecutorError("the ray executor needs Ray: pip install 'sparsity-planner[ray]'") from None
        started = False
        if not ray.is_initialized():
            import logging

            options = {"include_dashboard": False, "logging_level": logging.ERROR}
            try:
                if self.address is not None:
                    ray.init(address=self.address, **options)
                else:
                    ray.init(num_cpus=self.n_jobs, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                raise ExecutorError(f"cannot start or reach {where}: {_first_line(exc)}") from None
            started = True
        self._ray = (ray, ray.remote(num_cpus=1)(_ray_call), ray.put(self.shared), started)
        return self._ray

    def _run_ray(self, jobs, todo, finish) -> None:
        ray, remote, shared_ref, _ = self._connect_ray()
        from ray.exceptions import RayError, RayTaskError

        limit = self.n_jobs or len(todo)
        queue = list(todo)
        pending: dict = {}
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    i = queue.pop(0)
                    pending[remote.remote(jobs[i].fn, shared_ref, jobs[i].args, jobs[i].kwargs)] = i
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        value = ray.get(ref)
                    except RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        raise _failure(jobs[i], cause if isinstance(cause, BaseException) else exc) from None
                    except RayError as exc:
                        raise ExecutorError(f"Ray lost job {jobs[i].name}: {_first_line(exc)}") from None
                    finish(i, value)
        finally:
            for ref in pending:  # Ctrl-C or a failure: stop what still runs
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # pragma: no cover - best effort while stopping
                    pass


def run_jobs(jobs: Sequence[Job], *, executor: str = "local", n_jobs: int | None = None,
             address: str | None = None, store=None, meta: dict | None = None, shared=_NO_SHARED,
             on_result: Callable[[int, Job, Any, bool], None] | None = None) -> list:
    """The results of ``jobs``, in their order: :meth:`Executor.run` on a new :class:`Executor`,
    closed afterwards."""
    with Executor(executor, n_jobs, address, shared) as ex:
        return ex.run(jobs, store=store, meta=meta, on_result=on_result)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _call(fn, shared, args, kwargs):
    return fn(*args, **kwargs) if shared is _NO_SHARED else fn(shared, *args, **kwargs)


def _failure(job: Job, exc: BaseException | str) -> JobError:
    if isinstance(exc, BaseException):
        text = str(exc).strip().splitlines()
        what = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        if isinstance(exc, PlannerError) and text:
            what = text[0]
    else:
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else "failed"
    return JobError(f"job {job.name} failed: {what}", job, exc)


def _call_here(job: Job, shared):
    try:
        return _call(job.fn, shared, job.args, job.kwargs)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except Exception as exc:
        raise _failure(job, exc) from exc


# ------------------------------------------------------------------------------ local processes

_WORKER_SHARED = _NO_SHARED


def _init_worker(shared) -> None:
    """Worker start: ignore Ctrl-C (the parent stops the workers), keep the shared object."""
    import signal

    global _WORKER_SHARED
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_SHARED = shared


def _pool_call(fn, args, kwargs):
    return _call(fn, _WORKER_SHARED, args, kwargs)


def _stop_pool(pool, abort: bool) -> None:
    """Shut the pool down; with ``abort``, terminate its workers (they ignore Ctrl-C) and return
    only once they are reaped.

    The pool's manager thread reaps the workers itself: it sees them gone, fails their futures
    and joins every one. So this waits for that thread instead of joining the workers from here
    as well: two threads reaping one child race (the loser's ``waitpid`` fails with ECHILD, its
    ``poll`` reports the child alive, and ``multiprocessing.active_children()`` still lists it
    until the winner records its exit code; a ``kill`` sent then would hit a reaped pid).
    Only if the manager thread does not finish (a worker that outlives SIGTERM) are the
    remaining workers killed and joined here.
    """
    if not abort:
        pool.shutdown(wait=True)
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        try:
            p.terminate()
        except (OSError, ValueError, AttributeError):
            pass
    if manager is not None:
        manager.join(_REAP_SECONDS)
        if not manager.is_alive():
            return
    for p in processes:
        try:
            if p.exitcode is None:
                p.kill()
                p.join(_REAP_SECONDS)
        except (OSError, ValueError, AssertionError):
            pass


#: how long a terminated worker may take to be reaped before it is killed
_REAP_SECONDS = 10.0


# ------------------------------------------------------------------------------ Ray


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _ray_call(fn, shared, args, kwargs):
    return _call(fn, shared, args, kwargs)
