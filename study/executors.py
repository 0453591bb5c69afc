"""Where a study's runs execute: one after another on this machine (local), or
as one Slurm job array (slurm). Both skip finished runs and resume the rest.

Each run has a folder OUT/runs/RUN_ID holding dtrain's outputs and run.json,
written by the driver: the run's axes, arguments and spec hash, and its
status (completed, diverged, failed, preempted, submitted) with the exit code.
A run is finished when its summary.json says completed or diverged and its
run.json has the hash of the run as the study file now defines it; a
finished run is never run again. Any other run starts (or, from its newest
checkpoint, continues) with dtrain's --resume auto.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

FINISHED = ("completed", "diverged")
DIVERGED_EXIT = 3
PREEMPTED_EXIT = 75


def read_json(path):
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def write_json(path, value):
    temporary = Path(str(path) + ".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    temporary.replace(path)


def run_dir(out, run):
    return Path(out) / "runs" / run.run_id


def is_finished(directory, run):
    record = read_json(directory / "run.json")
    summary = read_json(directory / "summary.json")
    return bool(record and summary and record.get("hash") == run.spec_hash
                and summary.get("status") in FINISHED)


def prepare(directory, run, log):
    """Readies a run's folder: keeps it when it belongs to this very run (to
    resume from its checkpoints), empties it when the run changed."""
    record = read_json(directory / "run.json")
    if directory.exists() and (not record or record.get("hash") != run.spec_hash):
        log(f"  {run.run_id}: its spec changed since the last run; starting it over")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = record if directory.joinpath("run.json").exists() else {}
    record.update({"id": run.run_id, "axes": run.axes(), "args": run.args, "hash": run.spec_hash})
    return record


def classify(exit_code, summary):
    """(status, exit code) of a run from dtrain's exit code and summary.json."""
    status = (summary or {}).get("status")
    if exit_code == 0 and status == "completed":
        return "completed", 0
    if exit_code in (0, DIVERGED_EXIT) and status == "diverged":
        return "diverged", exit_code
    if exit_code == PREEMPTED_EXIT or status == "preempted":
        return "preempted", PREEMPTED_EXIT
    return "failed", exit_code if exit_code != 0 else 1


class LocalExecutor:
    """Runs each run with mpirun on this machine, one at a time. SIGINT or
    SIGTERM stops the study after the current run has checkpointed (dtrain
    exits 75); rerunning the study continues it."""

    def __init__(self, root, dtrain, mpirun, log=print):
        self.root, self.dtrain, self.mpirun, self.log = Path(root), dtrain, mpirun, log
        self.interrupted = False
        self.child = None
        self.skipped = 0  # runs finished before

    def command(self, study, run, directory):
        launcher = [self.mpirun, "-np", str(study.ranks), "--bind-to", "none"]
        if study.ranks > 2:
            launcher.append("--oversubscribe")
        return [*launcher, self.dtrain, "--config", str(study.base_config), *run.args,
                "--out-dir", str(directory), "--resume", "auto"]

    def on_signal(self, number, _frame):
        # The child runs in its own session, so a Ctrl-C reaches only us. We
        # pass on one SIGUSR1: mpirun forwards it to every rank (a SIGTERM it
        # would follow with SIGKILL), and dtrain checkpoints and exits 75.
        self.interrupted = True
        if self.child and self.child.poll() is None:
            self.child.send_signal(signal.SIGUSR1)

    def execute(self, study, runs, out):
        """Runs what is not finished. Returns {run_id: status} for the runs it ran."""
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        previous = {number: signal.signal(number, self.on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
        outcomes = {}
        try:
            for index, run in enumerate(runs, 1):
                directory = run_dir(out, run)
                counter = f"[{index:{len(str(len(runs)))}d}/{len(runs)}]"
                if is_finished(directory, run):
                    status = read_json(directory / "summary.json")["status"]
                    self.log(f"{counter} skip {run.run_id}: {status} before")
                    self.skipped += 1
                    continue
                if self.interrupted:
                    break
                record = prepare(directory, run, self.log)
                command = self.command(study, run, directory)
                write_json(directory / "run.json", {**record, "status": "running", "exit_code": None})
                # dtrain writes a summary at the end of each start; one from an
                # earlier start must not speak for this one.
                (directory / "summary.json").unlink(missing_ok=True)
                started = time.monotonic()
                with open(directory / "dtrain.log", "a") as output:
                    output.write(f"+ {' '.join(command)}\n")
                    output.flush()
                    self.child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                                  cwd=self.root, start_new_session=True)
                    exit_code = self.child.wait()
                    self.child = None
                seconds = time.monotonic() - started
                status, exit_code = classify(exit_code, read_json(directory / "summary.json"))
                write_json(directory / "run.json", {**record, "status": status, "exit_code": exit_code,
                                                    "driver_seconds": seconds + record.get("driver_seconds", 0)})
                if status in FINISHED:
                    shutil.rmtree(directory / "checkpoints", ignore_errors=True)  # only ever needed to resume
                outcomes[run.run_id] = status
                self.log(f"{counter} {run.run_id}: {describe(directory, status, exit_code)} ({seconds:.1f} s)")
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        return outcomes


def describe(directory, status, exit_code):
    summary = read_json(directory / "summary.json") or {}
    if status == "failed":
        return f"FAILED with exit code {exit_code}; see {directory / 'dtrain.log'}"
    if status == "preempted":
        return "interrupted at a checkpoint; a rerun continues it"
    text = f"{status} after {summary.get('steps', '?')} steps"
    if summary.get("steps_to_target") is not None:
        text += f", target reached at step {summary['steps_to_target']}"
    elif "steps_to_target" in summary:
        text += ", target not reached"
    return text


def slurm_status(directory):
    """(status, exit code) of a run submitted to Slurm, from its summary and
    the exit code train.sbatch logged in job.log; "submitted" while neither
    says anything yet."""
    summary = read_json(directory / "summary.json")
    job_log = directory / "job.log"
    exit_codes = re.findall(r"dtrain exited (\d+)", job_log.read_text()) if job_log.exists() else []
    if summary and summary.get("status") in FINISHED:
        return summary["status"], int(exit_codes[-1]) if exit_codes else 0
    if exit_codes:
        return classify(int(exit_codes[-1]), summary)
    return "submitted", None


class SlurmExecutor:
    """Submits the unfinished runs as one job array through
    cluster/slurm/sweep.sbatch, each line carrying its run's --out-dir, and
    (with wait) polls squeue until the array is done."""

    def __init__(self, root, dtrain, log=print, poll_seconds=10):
        self.root, self.dtrain, self.log, self.poll_seconds = Path(root), dtrain, log, poll_seconds
        self.skipped = 0  # runs finished before

    @staticmethod
    def queued(job_id):
        """Whether Slurm still lists any task of the array job."""
        result = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%i"], capture_output=True, text=True)
        return result.returncode == 0 and bool(result.stdout.strip())

    def execute(self, study, runs, out, wait=False):
        out = Path(out)
        slurm_dir = out / "slurm"
        slurm_dir.mkdir(parents=True, exist_ok=True)
        outcomes, pending, live_jobs = {}, [], set()
        for run in runs:
            directory = run_dir(out, run)
            record = read_json(directory / "run.json") or {}
            if is_finished(directory, run):
                self.log(f"skip {run.run_id}: {read_json(directory / 'summary.json')['status']} before")
                self.skipped += 1
                continue
            job = record.get("slurm_job")
            if record.get("hash") == run.spec_hash and record.get("status") == "submitted" and job:
                if self.queued(job.split("_")[0]):
                    live_jobs.add(job.split("_")[0])
                    continue
                status, exit_code = slurm_status(directory)
                if status == "submitted":
                    status = "pending"  # its job ended without it: never started, or cancelled
                write_json(directory / "run.json", {**record, "status": status, "exit_code": exit_code})
                if status in FINISHED:
                    continue
                if status == "failed":
                    self.log(f"{run.run_id}: job {job} FAILED with exit code {exit_code}; submitting it again")
            pending.append(run)
        if live_jobs:
            self.log(f"{sum(1 for run in runs if self.in_jobs(out, run, live_jobs))} run(s) still queued or "
                     f"running in job(s) {', '.join(sorted(live_jobs))}; not submitted again")
        if pending:
            live_jobs.add(self.submit(study, pending, out, slurm_dir))
            outcomes.update({run.run_id: "submitted" for run in pending})
        if wait:
            for job in sorted(live_jobs):
                self.log(f"waiting for job {job} (squeue every {self.poll_seconds} s)")
                while self.queued(job):
                    time.sleep(self.poll_seconds)
            for run in runs:
                directory = run_dir(out, run)
                record = read_json(directory / "run.json") or {}
                if record.get("status") == "submitted" and record.get("hash") == run.spec_hash:
                    status, exit_code = slurm_status(directory)
                    status = "pending" if status == "submitted" else status
                    write_json(directory / "run.json", {**record, "status": status, "exit_code": exit_code})
                    outcomes[run.run_id] = status
                    self.log(f"{run.run_id}: {describe(directory, status, exit_code)}")
        return outcomes

    @staticmethod
    def in_jobs(out, run, jobs):
        record = read_json(run_dir(out, run) / "run.json") or {}
        return str(record.get("slurm_job", "")).split("_")[0] in jobs

    def submit(self, study, runs, out, slurm_dir):
        lines, records = [], []
        for run in runs:
            directory = run_dir(out, run).resolve()
            arguments = [*run.args, "--out-dir", str(directory)]
            blanks = [arg for arg in arguments if not arg or any(c.isspace() for c in arg)]
            if blanks:
                raise RuntimeError(f"{run.run_id}: sweep lines are split on blanks; argument {blanks[0]!r} has one")
            lines.append(" ".join(arguments))
        for run in runs:  # before sbatch: a task may start at once and write there
            records.append(prepare(run_dir(out, run), run, self.log))
            write_json(run_dir(out, run) / "run.json", {**records[-1], "status": "pending", "exit_code": None})
        sweep = slurm_dir / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        sweep.write_text(f"# {study.name}: {len(lines)} run(s), one per line (cluster/slurm/sweep.sbatch)\n"
                         + "\n".join(lines) + "\n")
        command = ["sbatch", "--parsable", f"--array=1-{len(lines)}", f"--ntasks={study.ranks}",
                   f"--job-name=study-{study.name}", f"--output={slurm_dir.resolve()}/%x-%A_%a.out",
                   *study.sbatch_options, str(self.root / "cluster/slurm/sweep.sbatch"),
                   str(study.base_config), str(sweep.resolve())]
        env = dict(os.environ, DTRAIN_ROOT=str(self.root), DTRAIN=str(Path(self.dtrain).resolve()))
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch failed (exit {result.returncode}): {result.stderr.strip()}")
        job = result.stdout.strip().split(";")[0]
        for index, (run, record) in enumerate(zip(runs, records), 1):
            write_json(run_dir(out, run) / "run.json", {**record, "status": "submitted", "exit_code": None,
                                                        "slurm_job": f"{job}_{index}"})
        self.log(f"submitted job array {job}: {len(runs)} run(s) from {sweep}")
        return job
