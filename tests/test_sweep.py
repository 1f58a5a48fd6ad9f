"""mi_ref.sweep: every (seed, unit) a task; local worker processes and a Dask cluster (loopback only) give the
rows of the serial run; killed workers, second invocations and interrupted sweeps lose and duplicate
nothing."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from mi_ref import cli, critics, experiments, plugins, sweep
from mi_ref.results import TASKS_DIR, RunDir
from mi_ref.runs import expand_run_dirs
from mi_ref.sweep import cluster as dask_path
from mi_ref.sweep.driver import MAX_SEEDS
from mi_ref.sweep.tasks import _steps_done, finished, merge, merged, plan, run_task

# two seeds x (baseline + 2 variants) = 6 tasks of a second or two each
TINY = dict(dataset="digits", n_iters=20, n_evals=2, critics=("bilinear",), estimators=("infonce", "nwj"))


class Lines:
    """A text stream that keeps what the sweep writes (its progress lines)."""

    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass

    def text(self):
        return "".join(self.parts)


# long enough (a second or more a task, checkpoints every 300 steps) to be killed in the middle
LONGER = dict(TINY, n_iters=1500, n_evals=5, estimators=("infonce",))
ROOT = Path(__file__).resolve().parent.parent


def rows_without_time(path):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(path).read_metrics()]


def serial_rows(tmp_path_factory, overrides, seed):
    """The rows of the serial ``mi-ref run`` of ``seed``, with one BLAS thread as the sweep's tasks."""
    out = tmp_path_factory.mktemp("serial")
    with threadpool_limits(limits=1):
        path = experiments.run_experiment("critics", "quick", seed, out, progress=False, **overrides)
    return rows_without_time(path)


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    return {seed: serial_rows(tmp_path_factory, TINY, seed) for seed in (0, 1)}


@pytest.fixture(scope="module")
def serial_longer(tmp_path_factory):
    return serial_rows(tmp_path_factory, LONGER, 0)


def seed_dir(out, seed, overrides=TINY):
    config = experiments.get("critics").config("quick", **overrides)
    return experiments.run_dir_for(out, "critics", "quick", seed, config)


def test_parse_seeds():
    assert sweep.parse_seeds("0-3") == [0, 1, 2, 3]
    assert sweep.parse_seeds("5") == [5]
    assert sweep.parse_seeds("0,2,5-7,2") == [0, 2, 5, 6, 7]
    for bad in ("", "a", "3-1", "-1", "1-", "0,,1"):
        with pytest.raises(ValueError, match="--seeds"):
            sweep.parse_seeds(bad)


def test_a_range_of_seeds_is_bounded(tmp_path):
    """Was: `mi-ref sweep critics --seeds 0-99999999999` hung expanding the range. Now a sweep takes at most
    MAX_SEEDS seeds, and the error comes at once (run in a process of its own, so that the old hang fails
    the test instead of stopping the suite)."""
    done = subprocess.run([sys.executable, "-m", "mi_ref.cli", "sweep", "critics", "--seeds", "0-99999999999", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"asks for 100000000000 seeds; a sweep takes at most {MAX_SEEDS}" in done.stderr
    assert not (tmp_path / "o").exists()
    assert len(sweep.parse_seeds(f"0-{MAX_SEEDS - 1}")) == MAX_SEEDS
    with pytest.raises(ValueError, match="a sweep takes at most"):
        sweep.parse_seeds(f"0-{MAX_SEEDS - 1},{MAX_SEEDS}")


def test_plan_has_one_task_per_seed_and_unit(tmp_path):
    tasks = plan("critics", "quick", [0, 1], TINY, tmp_path)
    assert [(t.seed, t.unit) for t in tasks] == [(s, u) for s in (0, 1)
                                                 for u in ("baseline", "bilinear-infonce", "bilinear-nwj")]
    assert tasks[0].run_dir == seed_dir(tmp_path, 0)
    assert tasks[0].dir.parent.parent.parent == tasks[0].run_dir.parent       # OUT/RUN_NAME/.tasks/seed-S/UNIT
    assert tasks[0].dir.parent.parent.name == TASKS_DIR
    # the units every experiment declares are the names its run writes
    for name in experiments.names():
        exp = experiments.get(name)
        units = exp.units(exp.presets["quick"])
        assert len(units) == len(set(units)) >= 1


def test_local_jobs_equal_serial_and_second_invocation_skips(tmp_path, tmp_path_factory, serial):
    out = tmp_path / "sweep"
    result = sweep.sweep("critics", "quick", [0, 1], TINY, out, jobs=2, progress=False)
    assert result["failed"] == {}
    for seed in (0, 1):
        path = seed_dir(out, seed)
        assert rows_without_time(path) == serial[seed]          # row for row, in the serial order
        assert RunDir(path).done_variants() == ["baseline", "bilinear-infonce", "bilinear-nwj"]
        assert (path / "summary.json").exists()
    assert not (out / seed_dir(out, 0).parent.name / TASKS_DIR).exists()   # task dirs merged away
    # every unit's final state is merged with its rows (pinned in progress.json), the serial run's own
    with threadpool_limits(limits=1):
        alone = experiments.run_experiment("critics", "quick", 0, tmp_path / "alone", progress=False, **TINY)
    for unit in ("bilinear-infonce", "bilinear-nwj"):
        kept, want = RunDir(seed_dir(out, 0)).load_final(unit)[0], RunDir(alone).load_final(unit)[0]
        assert kept.keys() == want.keys() and all((kept[k] == want[k]).all() for k in kept)
    record = json.loads((seed_dir(out, 0).parent / "sweep.json").read_text())
    assert record["complete_seeds"] == [0, 1]
    assert record["summary"]["bilinear-nwj"]["accuracy"]["n"] == 2
    # a second invocation runs nothing and changes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}
    lines = Lines()

    again = sweep.sweep("critics", "quick", [0, 1], TINY, out, jobs=2, stream=lines)
    assert again["failed"] == {}
    assert "6 finished before, 0 to run" in lines.text()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")} == before
    # more seeds later: only the new seed's tasks run, the old directories stay as they are
    more = sweep.sweep("critics", "quick", [0, 1, 2], TINY, out, jobs=2, progress=False)
    assert [p.name for p in more["run_dirs"]] == ["seed-0", "seed-1", "seed-2"]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert rows_without_time(seed_dir(out, 2)) == serial_rows(tmp_path_factory, TINY, 2)


def test_interrupted_sweep_merges_finished_tasks_and_resumes_the_rest(tmp_path, serial):
    """What a killed driver leaves: a task finished in its task dir but not merged, a task with a
    checkpoint only, a seed directory with some units. The same command completes it identically."""
    out = tmp_path / "sweep"
    tasks = {(t.seed, t.unit): t for t in plan("critics", "quick", [0], TINY, out)}
    run_task(tasks[0, "baseline"])
    assert merge(tasks[0, "baseline"], ["baseline", "bilinear-infonce", "bilinear-nwj"])
    run_task(tasks[0, "bilinear-nwj"])                       # finished, not merged
    assert finished(tasks[0, "bilinear-nwj"]) and not merged(tasks[0, "bilinear-nwj"])
    # bilinear-infonce: interrupted after its first evaluation (its task dir holds a checkpoint at step 0)
    from mi_ref import faults

    def stop(point):
        if point == "update":
            raise KeyboardInterrupt
    faults.HOOK = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            run_task(tasks[0, "bilinear-infonce"])
    finally:
        faults.HOOK = None
    assert RunDir(tasks[0, "bilinear-infonce"].dir).checkpoint_path("bilinear-infonce").exists()
    lines = Lines()

    result = sweep.sweep("critics", "quick", [0], TINY, out, jobs=1, stream=lines)
    assert result["failed"] == {}
    assert "2 finished before, 1 to run" in lines.text()
    assert rows_without_time(seed_dir(out, 0)) == serial[0]


def test_a_merge_interrupted_between_the_rows_and_the_done_mark_is_merged_again(tmp_path, serial):
    """A driver killed after a merge wrote the unit's rows into the seed directory but before it marked the
    unit done: those rows belong to no finished variant and have no checkpoint, which the audit takes for
    damage in a run directory; in a sweep the merge writes them again."""
    out = tmp_path / "sweep"
    tasks = plan("critics", "quick", [0], TINY, out)
    units = [t.unit for t in tasks]
    run_task(tasks[0])
    assert merge(tasks[0], units)
    run_task(tasks[1])
    seed_store, task_store = RunDir(tasks[1].run_dir), RunDir(tasks[1].dir)
    seed_store.rewrite_metrics(seed_store.read_metrics() + task_store.read_metrics())      # the killed merge
    result = sweep.sweep("critics", "quick", [0], TINY, out, jobs=1, progress=False)
    assert result["failed"] == {}
    assert rows_without_time(seed_dir(out, 0)) == serial[0]


def test_merge_is_idempotent_and_keeps_the_order_of_units(tmp_path, serial):
    out = tmp_path / "sweep"
    tasks = plan("critics", "quick", [0], TINY, out)
    units = [t.unit for t in tasks]
    for task in reversed(tasks):                     # finished in the opposite order
        run_task(task)
        assert merge(task, units)
        assert merge(task, units)              # a second merge (a driver killed after the first) is a no-op
    assert rows_without_time(seed_dir(out, 0)) == serial[0]
    assert RunDir(seed_dir(out, 0)).done_variants() == units      # the serial run's order, not completion's
    assert RunDir(seed_dir(out, 0)).audit() == []
    # a seed directory held by another process: the merge waits (returns False) and changes nothing
    extra = plan("critics", "quick", [1], TINY, out)[0]
    run_task(extra)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from mi_ref.results import RunDir
        RunDir({str(extra.run_dir)!r}).lock()
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert merge(extra, units) is False
        assert finished(extra) and not RunDir(extra.run_dir).metrics_path.exists()
    finally:
        holder.kill()
        holder.wait()
    assert merge(extra, units)


KILL_DRIVER = textwrap.dedent("""
    import sys
    from mi_ref import sweep
    overrides = {overrides!r}
    result = sweep.sweep("critics", "quick", [0], overrides, sys.argv[1], jobs=1, interval=1.0)
    sys.exit(1 if result["failed"] else 0)
""")


def _kill_task_process(task, proc, timeout=120):
    """Wait until ``task`` has a checkpoint after step 0, then kill -9 the process holding its directory."""
    pid = _task_process(task, proc, timeout)
    os.kill(pid, signal.SIGKILL)
    return pid


def _task_process(task, proc, timeout=120):
    """The pid of the process running ``task``, once the task has a checkpoint after step 0."""
    ckpt = RunDir(task.dir).checkpoint_path(task.unit)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if ckpt.exists() and (task.dir / ".lock").exists():
            try:
                from mi_ref.files import load_npz
                from mi_ref.checkpoints import array_to_json
                step = array_to_json(load_npz(ckpt)["__meta__"])["step"]
            except Exception:      # being replaced right now
                step = 0
            if step > 0:
                holder = (task.dir / ".lock").read_text().split()
                return int(holder[1])
        time.sleep(0.02)
    raise AssertionError(f"{task.key} never reached a checkpoint after step 0")


def test_local_worker_killed_mid_task_is_retried_and_resumes(tmp_path, serial_longer):
    out = tmp_path / "sweep"
    task = [t for t in plan("critics", "quick", [0], LONGER, out) if t.unit == "bilinear-infonce"][0]
    script = KILL_DRIVER.format(overrides=LONGER)
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    pid = _kill_task_process(task, proc)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert pid != proc.pid
    assert "killed by signal 9" in stderr and "attempt 2 of 3" in stderr
    assert rows_without_time(seed_dir(out, 0, LONGER)) == serial_longer       # nothing lost, nothing twice


# a plugin critic (README, "Plugins"): the spawned workers know it only through the plugins their tasks carry
COSINE_PLUGIN = textwrap.dedent("""
    import autograd.numpy as np

    from mi_ref.critics import CRITICS, check_pair


    class Cosine:
        def __init__(self, dim_u, dim_v=None, temperature=0.1):
            self.temperature = temperature

        def init(self, rng):
            return {}

        def apply(self, params, u, v):
            check_pair(u, v)
            u = u / np.sqrt(np.sum(u ** 2, axis=1, keepdims=True))
            v = v / np.sqrt(np.sum(v ** 2, axis=1, keepdims=True))
            return np.dot(u, v.T) / self.temperature


    CRITICS.register("cosine", Cosine, label="cosine", color="tab:brown")
""")
# seed 0: the baseline, the bilinear and the plugin's critic, each a task
PLUGGED = dict(TINY, critics=("bilinear", "cosine"), estimators=("infonce",))


@pytest.fixture
def cosine_plugin(tmp_path, monkeypatch):
    """The plugin file registering the critic 'cosine' (not loaded yet); what the test loads of it in this
    process is forgotten afterwards."""
    path = tmp_path / "plugin" / "cosine_critic.py"
    path.parent.mkdir()
    path.write_text(COSINE_PLUGIN, encoding="utf-8")
    monkeypatch.setattr(plugins, "LOADED", [])
    monkeypatch.setattr(plugins, "_GIVEN", [])
    yield path
    forget_plugins()
    for name in [m for m in sys.modules if m.startswith("mi_ref_plugin_")]:
        del sys.modules[name]


def forget_plugins():
    """This process as it was before it loaded a plugin (the 'cosine' critic unregistered)."""
    if "cosine" in critics.CRITICS:
        critics.CRITICS.unregister("cosine")
    plugins.LOADED.clear()
    plugins._GIVEN.clear()


@pytest.fixture
def serial_plugged(cosine_plugin, tmp_path_factory):
    """The serial run of seed 0 with the plugin's critic (loaded for it, as `mi-ref run --plugin` does, and
    forgotten again)."""
    plugins.load(cosine_plugin)
    rows = serial_rows(tmp_path_factory, PLUGGED, 0)
    forget_plugins()
    return rows


def test_a_plugin_critic_runs_on_two_local_workers_as_in_the_serial_run(tmp_path, cosine_plugin, serial_plugged,
                                                                       monkeypatch):
    """Every task carries the plugins loaded by name in the driver (the CLI's --plugin) as absolute paths:
    the spawned workers, started elsewhere, load them before the task and compute the serial run's rows."""
    monkeypatch.chdir(cosine_plugin.parent)
    plugins.load("cosine_critic.py")                          # given relative to the working directory
    tasks = plan("critics", "quick", [0], PLUGGED, tmp_path / "sweep")
    assert [t.unit for t in tasks] == ["baseline", "bilinear-infonce", "cosine-infonce"]
    assert all(t.plugins == (str(cosine_plugin.resolve()),) for t in tasks)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sweep"
    result = sweep.sweep("critics", "quick", [0], PLUGGED, out, jobs=2, progress=False)
    assert result["failed"] == {}
    assert rows_without_time(seed_dir(out, 0, PLUGGED)) == serial_plugged


def test_a_worker_that_cannot_load_a_plugin_fails_its_tasks_once_naming_it(tmp_path, cosine_plugin):
    """A plugin file the workers cannot read (here: removed after the driver loaded it; on a cluster: not on
    a shared filesystem) fails every task with one line naming the file and the host, without retries."""
    lines = Lines()
    plugins.load(cosine_plugin)
    cosine_plugin.unlink()
    result = sweep.sweep("critics", "quick", [0], PLUGGED, tmp_path / "sweep", jobs=1, stream=lines)
    assert len(result["failed"]) == 3, lines.text()
    for why in result["failed"].values():
        assert why.startswith("its worker could not load its plugins (plugin ") and "no such file" in why, why
        assert str(cosine_plugin.resolve()) in why and "on the worker host" in why, why
    assert "attempt 2" not in lines.text()


def test_errors_before_anything_runs(tmp_path, capsys):
    with pytest.raises(ValueError, match="exceed the"):
        sweep.sweep("critics", "quick", [0], TINY, tmp_path, jobs=sweep.available_cores() + 1)
    with pytest.raises(ValueError, match="no setting"):
        sweep.sweep("critics", "quick", [0], dict(TINY, lr_typo=1.0), tmp_path)
    with pytest.raises(ValueError, match="synthetic"):
        sweep.sweep("sampling", "quick", [0], {}, tmp_path, data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError):
        sweep.sweep("critics", "paper", [0], {}, tmp_path, data_dir=str(tmp_path / "nothing"))
    assert list(tmp_path.iterdir()) == []                       # nothing written
    assert cli.main(["sweep", "critics", "--seeds", "0", "--jobs", "1", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert cli.main(["sweep", "critics", "--seeds", "x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert cli.main(["sweep", "nope", "--seeds", "0"]) == 2


def test_cli_sweep_then_plot_and_findings_over_the_sweep_dir(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["sweep", "critics", "--seeds", "0-1", "--jobs", "1", "--out", str(out), "--quiet", "--dataset", "digits",
            "--set", "n_iters=20", "--set", "n_evals=2", "--set", "critics=bilinear"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "summary of 2 runs" in text and "mean ± sd over the seeds" in text
    run_folder = seed_dir(out, 0, dict(TINY)).parent
    assert expand_run_dirs([run_folder]) == [run_folder / "seed-0", run_folder / "seed-1"]
    assert expand_run_dirs([out]) == [run_folder / "seed-0", run_folder / "seed-1"]
    assert cli.main(["plot", str(run_folder), "--out", str(tmp_path / "fig")]) == 0
    assert len(list((tmp_path / "fig").glob("*.png"))) == 1          # both seeds pooled into one figure
    assert cli.main(["findings", str(out), "--out", str(tmp_path / "f.json")]) == 0
    verdicts = json.loads((tmp_path / "f.json").read_text())
    assert verdicts["findings"] and all(v["seeds"] == [0, 1] for v in verdicts["findings"])
    with pytest.raises(FileNotFoundError, match="holds no run directory"):
        expand_run_dirs([tmp_path / "fig"])


def test_a_grid_sweep_runs_the_product_each_config_its_own_run_and_compares_them(tmp_path, tmp_path_factory,
                                                                                  serial, capsys):
    """mi-ref sweep --grid: every combination of the values is a config with its own RUN_NAME, each seed of
    each the serial run's rows; the closing table is mean ± the sample sd over the seeds of each config."""
    import numpy as np

    from mi_ref.stats import sample_sd
    out = tmp_path / "runs"
    argv = ["sweep", "critics", "--seeds", "0-1", "--jobs", "2", "--out", str(out), "--dataset", "digits",
            "--steps", "20", "--evals", "2", "--set", "critics=bilinear", "--grid", "lr=1e-3,3e-3",
            "--grid", "estimators=[infonce,nwj],[nwj]"]
    assert cli.main(argv) == 0
    text, err = capsys.readouterr()
    assert "20 tasks (4 configs x 2 seeds x their units)" in err
    assert "lr=0.003, estimators=nwj: seed 1 bilinear-nwj done" in err      # each progress line names its config
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(experiments.run_name("critics", "quick", experiments.get("critics").config(
        "quick", **dict(TINY, lr=lr, estimators=est))) for lr in (1e-3, 3e-3) for est in (("infonce", "nwj"), ("nwj",)))
    assert len(names) == 4 and all((out / n / "sweep.json").is_file() for n in names)
    for seed in (0, 1):                           # the grid's (lr=1e-3, both estimators) is the serial run
        assert rows_without_time(seed_dir(out, seed)) == serial[seed]
    three = dict(TINY, lr=3e-3, estimators=("nwj",))
    assert rows_without_time(seed_dir(out, 1, three)) == serial_rows(tmp_path_factory, three, 1)
    assert "4 configs compared" in text and "sample sd, ddof = 1; seeds 0, 1" in text
    lines = [line.split() for line in text.splitlines()]
    header = next(line for line in lines if line[:1] == ["variant"])
    assert header[:4] == ["variant", "lr", "estimators", "seeds"]
    nwj = [line for line in lines if line[:1] == ["bilinear-nwj"]]
    assert [(line[1], line[2]) for line in nwj] == [("0.001", "infonce,nwj"), ("0.001", "nwj"), ("0.003", "infonce,nwj"),
                                                    ("0.003", "nwj")]
    column = 4 + 3 * header[4:].index("accuracy")          # each field is "mean ± sd"
    accuracies = [RunDir(seed_dir(out, s, three)).read_metrics()[-1]["accuracy"] for s in (0, 1)]
    assert nwj[3][column:column + 3] == [f"{np.mean(accuracies):.4f}", "±", f"{sample_sd(accuracies):.4f}"]
    # the same command again runs nothing
    assert cli.main(argv) == 0
    assert "4 configs compared" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--grid", "lr=1e-3,0.001"], "gives the value 0.001 twice"),
    (["--grid", "lr=1e-3", "--grid", "lr=3e-3"], "--grid lr is given twice"),
    (["--set", "lr=1e-3", "--grid", "lr=3e-3,1e-2"], "--set lr=... and --grid lr=... both set lr"),
    (["--steps", "20", "--grid", "n_iters=10,20"], "--steps and --grid n_iters=... both set n_iters"),
    (["--grid", "lr=fast,1e-3"], "--set lr=fast: expected a number"),
    (["--grid", "learning_rate=1,2"], "critics has no setting 'learning_rate'"),
    (["--grid", "critics=[bilinear,concat"], "unbalanced brackets"),
    (["--grid", "batch_size=64,500"], "the grid's config batch_size=500: batch_size 500 is larger than the 450 test"),
])
def test_a_bad_grid_is_exit_2_before_anything_is_written(tmp_path, capsys, extra, message):
    argv = ["sweep", "critics", "--seeds", "0", "--jobs", "1", "--out", str(tmp_path / "o"), "--quiet", "--dataset",
            "digits"] + extra
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ Dask, on the loopback only

@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as c:
        with distributed.Client(c) as client:
            yield client


def test_dask_cluster_equals_serial_and_local(cluster, tmp_path, serial):
    out = tmp_path / "dask"
    result = sweep.sweep("critics", "quick", [0, 1], TINY, out, scheduler=cluster, progress=False)
    assert result["failed"] == {}
    for seed in (0, 1):
        assert rows_without_time(seed_dir(out, seed)) == serial[seed]
    # the CLI connects by address
    out2 = tmp_path / "dask-cli"
    argv = ["sweep", "critics", "--seeds", "0", "--scheduler", cluster.scheduler.address, "--out", str(out2),
            "--quiet", "--dataset", "digits", "--set", "n_iters=20", "--set", "n_evals=2", "--set",
            "critics=bilinear"]
    assert cli.main(argv) == 0
    assert rows_without_time(seed_dir(out2, 0)) == serial[0]


def test_dask_worker_killed_mid_sweep(cluster, tmp_path, serial_longer):
    """kill -9 of the worker process running a task: the nanny starts a new worker, the scheduler runs the
    task again, it resumes from its checkpoint; the rows equal the serial run's, none lost or doubled."""
    import threading
    out = tmp_path / "dask"
    task = [t for t in plan("critics", "quick", [0], LONGER, out) if t.unit == "bilinear-infonce"][0]
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        sweep.sweep("critics", "quick", [0], LONGER, out, scheduler=cluster, progress=False)))
    thread.start()

    class Alive:
        def poll(self):
            return None if thread.is_alive() else 0

        def communicate(self):
            return "the sweep ended before the kill"
    pid = _kill_task_process(task, Alive())
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert result["failed"] == {}
    assert pid not in [p for p in cluster.run(os.getpid).values()]     # that worker was replaced
    assert rows_without_time(seed_dir(out, 0, LONGER)) == serial_longer


def test_a_plugin_critic_runs_on_the_dask_workers_as_in_the_serial_run(cluster, tmp_path, cosine_plugin,
                                                                      serial_plugged):
    """The Dask workers, started before the plugin was loaded and in processes of their own, load it from
    the tasks (a plugin given to sweep() itself, the Python API's --plugin) and compute the serial rows."""
    assert not any(cluster.run(plugins.given).values())          # no worker has loaded a plugin
    out = tmp_path / "dask"
    result = sweep.sweep("critics", "quick", [0], PLUGGED, out, scheduler=cluster, progress=False,
                         plugins=[str(cosine_plugin)])
    assert result["failed"] == {}
    assert rows_without_time(seed_dir(out, 0, PLUGGED)) == serial_plugged
    assert (str(cosine_plugin.resolve()),) in cluster.run(plugins.given).values()


def test_an_unreachable_scheduler_is_named(tmp_path, capsys, monkeypatch):
    """Was: the Dask connection timeout ended with "choose another path or fix its permissions" and named
    no path. Now the message names the scheduler's address and what to check."""
    pytest.importorskip("distributed")
    import socket
    with socket.socket() as s:                     # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(dask_path, "CONNECT_TIMEOUT", "2s")
    argv = ["sweep", "critics", "--seeds", "0", "--scheduler", address, "--out", str(tmp_path), "--quiet", "--dataset",
            "digits", "--set", "n_iters=20", "--set", "n_evals=2", "--set", "critics=bilinear"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Dask scheduler at {address}" in err and "permissions" not in err, err


def test_missing_dask_is_a_clear_error(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name.startswith(("dask", "distributed")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_dask)
    with pytest.raises(ValueError, match=r'pip install "mi-ref\[dask\]"'):
        sweep.sweep("critics", "quick", [0], TINY, tmp_path, scheduler="tcp://127.0.0.1:1", progress=False)


def test_a_task_reports_progress_under_its_run_name_and_counts_only_its_own_variant(tmp_path, capsys):
    task = [t for t in plan("critics", "quick", [0], TINY, tmp_path) if t.unit == "bilinear-nwj"][0]
    run_task(task, progress=True)
    err = capsys.readouterr().err
    assert f"[{task.run_name} seed 0] variant 1/1 bilinear-nwj" in err, err
    assert "variant 2/" not in err and "[seed-0 seed 0]" not in err


def test_the_sweep_counts_a_running_task_by_its_heartbeat_between_evaluations(tmp_path):
    """Was: the sweep's progress read only a task's metric rows, so a 4000-step task evaluated every 1000
    steps showed 0 % for its first 1000 steps."""
    task = [t for t in plan("critics", "quick", [0], TINY, tmp_path) if t.unit == "bilinear-nwj"][0]
    store = RunDir(task.dir)
    store.path.mkdir(parents=True)
    assert _steps_done(task, 20) == 0                                 # nothing yet
    beat = store.heartbeat()
    beat("bilinear-nwj", 7)
    assert json.loads(store.heartbeat_path.read_text()) == {"step": 7, "variant": "bilinear-nwj"}
    assert _steps_done(task, 20) == 7
    beat("bilinear-nwj", 25)
    assert _steps_done(task, 20) == 20                                # never past the task's steps
    beat("bilinear-infonce", 9)                                       # another unit's beat is not this one's
    assert _steps_done(task, 20) == 0
    store.heartbeat_path.write_text("{not json")
    assert _steps_done(task, 20) == 0
    assert RunDir(task.run_dir).heartbeat() is None                   # only a task's directory beats


def test_the_sweep_eta_prices_each_unit_at_its_own_speed():
    """Was: one rate for every step of the sweep (steps done / seconds), so a sweep of slow ConvNet and fast
    MLP units, with the MLPs finished first, said 16 h for about 7 h. Two workers, a "conv" unit 10 times
    slower per step than "mlp", two seeds of each, 1000 steps a task; a clock and step counts made up."""
    from dataclasses import dataclass

    from mi_ref.sweep.tasks import SweepProgress

    @dataclass(frozen=True)
    class Unit:
        unit: str
        seed: int
    conv0, mlp0, conv1, mlp1 = Unit("conv", 0), Unit("mlp", 0), Unit("conv", 1), Unit("mlp", 1)
    now, steps = [0.0], {}
    bar = SweepProgress("t", [conv0, mlp0, conv1, mlp1], lambda t: 1000, enabled=False, clock=lambda: now[0],
                        steps_done=lambda t, n: min(steps.get(t, 0), n))
    assert bar.line().endswith("ETA ?")                               # nothing measured yet
    bar.start(conv0)
    bar.start(mlp0)
    now[0], steps[conv0], steps[mlp0] = 10.0, 100, 1000               # conv: 0.1 s a step, mlp: 0.01 s
    bar.stop(mlp0, finished=True)
    bar.start(conv1)
    now[0], steps[conv0], steps[conv1] = 20.0, 200, 100
    # left: conv0 800 and conv1 900 steps at 0.1 s, mlp1 1000 steps at 0.01 s: 180 s of work on 2 workers
    assert bar.seconds_left() == pytest.approx(90.0)
    assert bar.line().endswith("tasks 1/4 done, 2 running, 0 failed | steps 32%, 65.0 steps/s, ETA 1m30s")
    # a single rate (1300 steps in 20 s) would have said 2700 / 65 = 42 s
    bar.stop(conv1)                                                   # retried: its 100 steps count as measured
    now[0] = 30.0
    steps[conv0] = 300
    # conv: 40 s over 400 steps; left conv0 700, conv1 900 (resumed from its checkpoint), mlp1 1000: 170 s
    # of work, 85 s a worker, but conv1 alone takes 90 s
    assert bar.seconds_left() == pytest.approx(90.0)
    only = SweepProgress("t", [conv0, Unit("new", 0)], lambda t: 1000, enabled=False, clock=lambda: now[0],
                         steps_done=lambda t, n: min(steps.get(t, 0), n))
    only.start(conv0)
    now[0] = 40.0
    steps[conv0] = 400                                                # 100 steps in 10 s: 0.1 s a step
    # a unit that has not run yet is priced at the speed of those that have: 600 + 1000 steps at 0.1 s on the
    # one worker seen
    assert only.seconds_left() == pytest.approx(160.0)


def test_a_task_leaves_its_heartbeat_until_merged_and_a_plain_run_writes_none(tmp_path):
    task = [t for t in plan("critics", "quick", [0], TINY, tmp_path) if t.unit == "bilinear-nwj"][0]
    run_task(task)
    assert json.loads(RunDir(task.dir).heartbeat_path.read_text())["variant"] == "bilinear-nwj"
    assert merge(task, experiments.get("critics").units(task.config()))
    assert not task.dir.exists() and not (task.run_dir / "heartbeat.json").exists()
    path = experiments.run_experiment("critics", "quick", 0, tmp_path / "plain", progress=False, **TINY)
    assert not (Path(path) / "heartbeat.json").exists()


def test_a_damaged_sweep_is_repaired_with_repair(tmp_path, serial, capsys):
    """Was: a damaged seed or task directory ended the sweep with "Resume with --repair", which `mi-ref sweep`
    rejected; the same command failed the same way, with exit code 1 (verify's). Now the sweep takes
    --repair, a failure is exit 2, and a damaged task is not retried in vain."""
    out = tmp_path / "sweep"
    argv = ["sweep", "critics", "--seeds", "0", "--jobs", "1", "--out", str(out), "--quiet", "--dataset", "digits",
            "--set", "n_iters=20", "--set", "n_evals=2", "--set", "critics=bilinear"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    store = RunDir(seed_dir(out, 0))
    lines = store.metrics_path.read_text().splitlines(keepends=True)
    store.metrics_path.write_text("".join(lines[:2] + lines[3:]))        # a row of bilinear-infonce lost
    for _ in range(2):                                                    # the same command fails the same way
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "bilinear-infonce" in err and "mi-ref sweep` command with --repair" in err, err
    assert cli.main(argv + ["--repair"]) == 0
    assert rows_without_time(seed_dir(out, 0)) == serial[0]
    # a task directory damaged: one clear failure (not retried), exit 2, and --repair recomputes the unit
    task = [t for t in plan("critics", "quick", [1], TINY, out) if t.unit == "bilinear-nwj"][0]
    from mi_ref import faults

    def stop(point):
        if point == "update":
            raise KeyboardInterrupt
    faults.HOOK = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            run_task(task)
    finally:
        faults.HOOK = None
    RunDir(task.dir).checkpoint_path(task.unit).write_bytes(b"garbage")
    argv1 = [a if a != "0" else "1" for a in argv]
    assert cli.main(argv1) == 2
    printed = capsys.readouterr()
    assert "its directory is damaged" in printed.out and "add --repair" in printed.err, printed
    assert "attempt 2" not in printed.err
    assert cli.main(argv1 + ["--repair"]) == 0
    assert rows_without_time(seed_dir(out, 1)) == serial[1]


@pytest.mark.parametrize("kind", ["file", "below-a-file"])
def test_an_unwritable_out_is_refused_before_any_worker_starts(tmp_path, capsys, kind):
    """Was: a sweep to an --out it could not write started its workers, which printed 63 tracebacks before
    the sweep exited 2. Now --out is tried first: one line, exit 2, no worker."""
    (tmp_path / "file").write_text("a file")
    out = tmp_path / "file" if kind == "file" else tmp_path / "file" / "sub"
    argv = ["sweep", "critics", "--seeds", "0-1", "--jobs", "2", "--out", str(out), "--dataset", "digits",
            "--set", "n_iters=20", "--set", "n_evals=2", "--set", "critics=bilinear"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mi-ref sweep: error: cannot use") and str(tmp_path / "file") in err


TERM_DRIVER = textwrap.dedent("""
    import sys
    from mi_ref import cli
    sys.exit(cli.main(["sweep", "critics", "--seeds", "0", "--jobs", "1", "--out", sys.argv[1], "--dataset", "digits",
                       "--set", "n_iters=1500", "--set", "n_evals=5", "--set", "critics=bilinear",
                       "--set", "estimators=infonce"]))
""")


def test_sigterm_to_the_driver_stops_its_workers(tmp_path, serial_longer):
    """Was: SIGTERM to the sweep's driver left its workers running; they finished their task and logged a
    BrokenPipeError. Now the driver forwards the signal: the worker stops at once (its task resumes from
    its last checkpoint), the driver exits 143, and the same command completes the sweep identically."""
    out = tmp_path / "sweep"
    task = [t for t in plan("critics", "quick", [0], LONGER, out) if t.unit == "bilinear-infonce"][0]
    driver = subprocess.Popen([sys.executable, "-c", TERM_DRIVER, str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    worker = _task_process(task, driver)
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 143 and "workers were stopped" in err, err
    deadline = time.monotonic() + 120                  # a liveness bound, not a speed check
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)
    log = task.log.read_text()
    assert "BrokenPipeError" not in log and "stopped by SIGTERM" in log, log
    result = sweep.sweep("critics", "quick", [0], LONGER, out, jobs=1, progress=False)
    assert result["failed"] == {}
    assert rows_without_time(seed_dir(out, 0, LONGER)) == serial_longer


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
