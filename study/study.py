#!/usr/bin/python3
"""The batch-size study driver (docs/studies.md): runs the grid of a study
file with dtrain, then writes results.csv, fit.json and report.md.

    launch/study.sh STUDY.ini [--quick] [--executor local|slurm] [--wait]
                              [--aggregate-only] [--out DIR]

Exit status: 0 when every run finished (completed or diverged), 1 when some
failed (they are named), 2 for a bad study file or arguments, 75 when
interrupted (rerun the same command to continue).
"""

import argparse
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # keep the checkout free of __pycache__

import aggregate  # noqa: E402
import report  # noqa: E402
import spec  # noqa: E402
from executors import LocalExecutor, SlurmExecutor, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="launch/study.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="the study file (INI), e.g. configs/studies/fashion_mnist_batch.ini")
    parser.add_argument("--quick", action="store_true", help="the study's tiny [quick] variant")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local",
                        help="local: one run after another with mpirun; slurm: one job array (default local)")
    parser.add_argument("--wait", action="store_true", help="slurm: wait for the job array, then aggregate")
    parser.add_argument("--aggregate-only", action="store_true", help="run nothing; aggregate what exists")
    parser.add_argument("--out", help="the study's out dir (default runs/studies/NAME, NAME-quick with --quick)")
    parser.add_argument("--dtrain", default=str(ROOT / "build/dtrain"), help="the dtrain binary (default build/dtrain)")
    parser.add_argument("--mpirun", default="mpirun", help="the mpirun to launch runs with (default mpirun)")
    parser.add_argument("--poll-seconds", type=float, default=10, help="slurm --wait: seconds between squeue polls")
    return parser.parse_args(argv)


def main(argv):
    arguments = parse_arguments(argv)
    try:
        study = spec.load(arguments.study, ROOT, quick=arguments.quick)
    except spec.SpecError as error:
        print(f"study: error: {error}", file=sys.stderr)
        return 2
    out = Path(arguments.out or ROOT / "runs/studies" / (study.name + ("-quick" if arguments.quick else "")))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    goal = "fixed budget" if study.fixed_budget else f"target {study.target}"
    print(f"study {study.name}{' (quick)' if study.quick else ''}: {len(study.runs)} runs, {goal}, "
          f"budget {study.describe_budget()}, {study.ranks} rank(s) each; out dir {out}", flush=True)
    write_json(out / "study.json", {"study_file": str(Path(arguments.study).resolve()),
                                    "text": Path(arguments.study).read_text(), "quick": study.quick,
                                    "runs": [run.run_id for run in study.runs]})

    interrupted = False
    if not arguments.aggregate_only:
        log = lambda line: print(line, flush=True)  # noqa: E731
        if arguments.executor == "local":
            if not Path(arguments.dtrain).is_file():
                print(f"study: error: no dtrain binary at {arguments.dtrain} (launch/setup.sh builds it)",
                      file=sys.stderr)
                return 2
            executor = LocalExecutor(ROOT, arguments.dtrain, arguments.mpirun, log)
            outcomes = executor.execute(study, study.runs, out)
            interrupted = executor.interrupted
        else:
            executor = SlurmExecutor(ROOT, arguments.dtrain, log, arguments.poll_seconds)
            try:
                outcomes = executor.execute(study, study.runs, out, wait=arguments.wait)
            except RuntimeError as error:
                print(f"study: error: {error}", file=sys.stderr)
                return 1
        verb = "submitted" if arguments.executor == "slurm" and not arguments.wait else "ran"
        print(f"{verb} {len(outcomes)} run(s); skipped {executor.skipped} finished run(s)", flush=True)

    rows = aggregate.collect(study, out)
    aggregate.write_csv(rows, out / "results.csv")
    if study.fixed_budget:
        fit = aggregate.json_safe(aggregate.fixed_budget_study(rows))
        write_json(out / "fixed_budget.json", fit)
    else:
        fit = aggregate.json_safe(aggregate.fit_study(rows, study.target))
        write_json(out / "fit.json", fit)
    report.write_report(study, out, rows, fit, wall_seconds=time.monotonic() - started)
    for line in report.fixed_budget_sentences(fit) if study.fixed_budget else []:
        print(line)
    for optimizer, entry in sorted(fit.get("fits", {}).items()):
        if entry["status"] == "not fitted":
            print(f"fit ({optimizer}): {entry['reason']}")
        else:
            shown = {key: "n/a" if entry.get(key) is None else f"{entry[key]:.4g}"
                     for key in ("s_min", "b_crit", "e_min", "r2", "mean_b_simple")}
            print(f"fit ({optimizer}, {entry['status']}): S_min {shown['s_min']} steps, B_crit {shown['b_crit']}, "
                  f"E_min {shown['e_min']} samples, R² {shown['r2']}; mean B_simple {shown['mean_b_simple']}")
            if "b_crit_interval" in entry:
                low, high = ("inf" if value is None else f"{value:.4g}" for value in entry["b_crit_interval"])
                s_low, s_high = (f"{value:.4g}" for value in entry["s_min_interval"])
                print(f"  {entry['seeds']} seeds: S_min in [{s_low}, {s_high}], B_crit in [{low}, {high}] "
                      f"(95% bootstrap over seeds)")
    print(f"wrote {out / 'results.csv'}, {out / ('fixed_budget.json' if study.fixed_budget else 'fit.json')}, "
          f"{out / 'report.md'} "
          f"({time.monotonic() - started:.1f} s)")

    failed = [row["run_id"] for row in rows if row["status"] == "failed"]
    if failed:
        print(f"study: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if interrupted:
        print("study: interrupted; run the same command again to continue", file=sys.stderr)
        return 75
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
