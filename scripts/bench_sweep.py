"""Benchmark how a sweep scales with local workers: the same sweep with 1 and with 2 worker processes (one
BLAS thread each), and the throughput ratio (ideal: the number of workers, 2.0 on 2 cores).

The sweep is a small real one: ``critics`` on the embedded MNIST subset, ``--seeds`` seeds, every critic and
estimator, ``--steps`` training steps per variant (the quick preset's evaluations), so a task takes
seconds, like a short real task, and the per-task costs (starting a worker process, importing, loading the
data, the probe at every evaluation) are part of what is measured. Each configuration runs ``--repeats``
times into a fresh directory, alternating, and the median wall time is quoted. The rows of both are
checked to be identical (the sweep's guarantee), so the benchmark also says the two computed the same.

With ``--dask`` it also runs the sweep on a ``dask.distributed.LocalCluster`` of 2 single-threaded worker
processes on the loopback.

Usage::

    python scripts/bench_sweep.py                      # 4 seeds x 7 tasks, 300 steps, 2 repeats
    python scripts/bench_sweep.py --seeds 2 --steps 100 --repeats 1 --dask

Run it on a quiet machine: other processes on the cores take throughput from the 2-worker sweep first.
"""

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def run_once(out, seeds, overrides, jobs=None, scheduler=None):
    from mi_ref import sweep
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    result = sweep.sweep("critics", "quick", seeds, overrides, out, jobs=jobs, threads=1, scheduler=scheduler,
                         progress=False)
    seconds = time.perf_counter() - start
    if result["failed"]:
        raise SystemExit(f"tasks failed: {result['failed']}")
    rows = {}
    for d in result["run_dirs"]:
        rows[d.name] = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                        for line in (d / "metrics.jsonl").read_text().splitlines()]
    return seconds, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4, help="number of seeds (default 4)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per variant (default 300)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration (default 2)")
    parser.add_argument("--dask", action="store_true", help="also a 2-worker Dask LocalCluster")
    args = parser.parse_args()
    from mi_ref.sweep import available_cores
    seeds = list(range(args.seeds))
    overrides = {"n_iters": args.steps}
    n_tasks = len(seeds) * 7
    print(f"sweep: critics, quick preset on mnist-subset, {len(seeds)} seeds x 7 tasks (baseline + 3 critics x 2 "
          f"estimators), {args.steps} steps per variant; {available_cores()} cores here")
    configs = [("1 worker", dict(jobs=1)), ("2 workers", dict(jobs=2))]
    cluster = client = None
    if args.dask:
        from dask.distributed import Client, LocalCluster
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        client = Client(cluster)
        configs.append(("dask, 2 workers", dict(scheduler=client)))
    times = {name: [] for name, _ in configs}
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, kw in configs:
                seconds, rows = run_once(Path(tmp) / name.replace(" ", "_").replace(",", ""), seeds, overrides, **kw)
                times[name].append(seconds)
                if reference is None:
                    reference = rows
                elif rows != reference:
                    raise SystemExit(f"{name}: the rows differ from the first configuration's")
                print(f"  repeat {r + 1}: {name:16s} {seconds:7.1f} s")
    if client is not None:
        client.close()
        cluster.close()
    base = statistics.median(times["1 worker"])
    print(f"\n{'configuration':18s} {'median s':>9s} {'tasks/min':>10s} {'throughput vs 1 worker':>23s}")
    for name, _ in configs:
        t = statistics.median(times[name])
        print(f"{name:18s} {t:9.1f} {60 * n_tasks / t:10.1f} {base / t:22.2f}x")
    print("identical rows in every configuration: yes")


if __name__ == "__main__":
    main()
