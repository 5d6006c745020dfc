"""The executor on a local Ray instance (two CPUs, started once for this module): the same
results as the local executor, failures as one error, compare's rows unchanged."""

import json
import math
import operator

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'sparsity-planner[ray]')")

from planner.cli import main  # noqa: E402
from planner.experiments.executor import Job, JobError, ResultStore, run_jobs  # noqa: E402

SWEEP = ["compare", "--arch", "64,32,32,10", "--densities", "0.1,0.05", "--strategies", "lr-bound,uniform",
         "--seeds", "2", "--epochs", "2", "--finetune-epochs", "1", "--rank-model", "analytic", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def test_ray_results_in_job_order_and_resume(tmp_path):
    jobs = [Job(operator.pow, (i, 3), label=f"cube {i}") for i in range(6)]
    store = ResultStore(tmp_path)
    store.save(jobs[4], -1)  # stored: read back, not recomputed
    assert run_jobs(jobs, executor="ray", store=tmp_path) == [0, 1, 8, 27, -1, 125]
    assert run_jobs(jobs, executor="ray", n_jobs=1) == [i ** 3 for i in range(6)]
    assert ray.is_initialized()  # an instance it did not start is left running


def test_ray_job_that_raises(tmp_path):
    jobs = [Job(math.sqrt, (4.0,), label="sqrt 4"), Job(math.sqrt, (-1.0,), label="sqrt -1")]
    with pytest.raises(JobError, match=r"^job sqrt -1 failed: ValueError: math domain error$"):
        run_jobs(jobs, executor="ray", n_jobs=1, store=tmp_path)
    assert ResultStore(tmp_path).load(jobs[0]) == (True, 2.0)


def test_compare_on_ray_gives_the_local_rows(capsys):
    pytest.importorskip("torch")
    rows = {}
    for name, extra in (("local", ["--jobs", "1"]), ("ray", ["--executor", "ray", "--jobs", "2"])):
        assert main([*SWEEP, "--json", *extra]) == 0, capsys.readouterr().err
        rows[name] = json.loads(capsys.readouterr().out)
    assert rows["ray"] == rows["local"]
    assert len(rows["ray"]["results"]) == 8


def test_sensitivity_on_ray_gives_the_local_table(capsys):
    pytest.importorskip("torch")
    sens = ["sensitivity", "--model", "examples.models:digits_cnn", "--input-shape", "1,8,8", "--dataset", "digits",
            "--samples", "100", "--steps", "1", "--min-density", "0.2", "--no-cache", "--json", "--chunk", "2"]
    out = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--jobs", "2"])):
        assert main([*sens, *extra]) == 0, capsys.readouterr().err
        out[name] = capsys.readouterr().out
    assert out["ray"] == out["local"]  # byte for byte
    assert [layer["name"] for layer in json.loads(out["ray"])["layers"]] == [
        "features.0", "features.2", "classifier.1", "classifier.3"]
