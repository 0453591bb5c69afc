#!/usr/bin/python3
"""A chaos soak (docs/reliability.md, "The chaos soak"): the language model at
2 ranks, checkpointing often, hit by faults at random moments, each followed
by --resume auto, must end as if nothing had happened.

A fault is SIGUSR1, SIGTERM or SIGINT (a preemption: both ranks stop at one
step with a checkpoint, exit 75) or SIGKILL (the job dies; the other rank is
ended by mpirun) to a random rank, after a random delay once the attempt has
trained a step, so faults land inside steps, all-reduces and checkpoint
writes. After the last fault the job runs to its end. Then:
  - the exported weights are bitwise equal to an uninterrupted run's;
  - metrics.jsonl holds every train record exactly once, equal to the
    uninterrupted run's apart from elapsed_sec, samples_per_sec, tokens_per_sec;
  - summary.json says completed;
and no attempt leaves a process behind.

    chaos_soak.py --dtrain build/dtrain --mpirun mpirun [--seed 1] [--faults 8] [--work DIR]

Prints one line per fault and a total; exits 1 on the first broken promise.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SIGNALS = {"SIGUSR1": signal.SIGUSR1, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}
TIMINGS = ("elapsed_sec", "samples_per_sec", "tokens_per_sec")
PREEMPTED = 75


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def job_arguments(steps):
    # A tiny GPT on the King James Bible. A checkpoint every 4 steps (the
    # newest 2 kept), a record every step, an evaluation only at the end.
    return ["--dataset", "kjv", "--model", "gpt", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
            "--block-size", "32", "--global-batch-size", "16", "--micro-batch-size", "8",
            "--optimizer", "adamw", "--lr", "0.003", "--base-batch-size", "16", "--grad-clip-norm", "1",
            "--max-steps", str(steps), "--eval-every", "0", "--log-every", "1",
            "--checkpoint-every", "4", "--keep-checkpoints", "2", "--threads", "1", "--seed", "11",
            "--collective-timeout", "30"]


class Job:
    def __init__(self, args, out_dir, log_path, extra):
        self.out_dir = out_dir
        self.log_path = log_path
        command = [args.mpirun, "--oversubscribe", "--bind-to", "none", "-np", "2", args.dtrain,
                   *job_arguments(args.steps), "--out-dir", out_dir, *extra]
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def trained_a_step(self):
        with open(self.log_path) as log:
            return re.search(r"^step \d+/", log.read(), re.M) is not None

    def rank_pid(self, rank):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip() != "dtrain":
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if self.out_dir.encode() not in cmdline.read().split(b"\0"):
                        continue
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ.read().split(b"\0"):
                        return int(entry)
            except OSError:
                continue
        return None

    def wait(self, limit):
        try:
            code = self.process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            kill_everything(os.path.dirname(self.out_dir))
            fail(f"an attempt ran past {limit} s (see {self.log_path})")
        self.log.close()
        return code


def job_pids(out_dir):
    """The processes of the job writing to OUT_DIR (pgrep: 0 found, 1 none)."""
    found = subprocess.run(["pgrep", "-f", "--", f"--out-dir {out_dir}( |$)"], capture_output=True, text=True)
    if found.returncode not in (0, 1):
        fail(f"pgrep failed: {found.stderr.strip()}")
    return [int(pid) for pid in found.stdout.split()]


def no_process_left(out_dir, what):
    deadline = time.time() + 10
    while job_pids(out_dir):
        if time.time() > deadline:
            fail(f"{what}: processes left: {job_pids(out_dir)}")
        time.sleep(0.2)


def kill_everything(work):
    for pid in job_pids(work + "/[a-z]*"):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def train_records(out_dir):
    records = []
    with open(os.path.join(out_dir, "metrics.jsonl")) as metrics:
        for line in metrics:
            record = json.loads(line)
            if record["event"] == "train":
                for timing in TIMINGS:
                    record.pop(timing, None)
                records.append(record)
    return records


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtrain", required=True)
    parser.add_argument("--mpirun", default="mpirun")
    parser.add_argument("--seed", type=int, default=1, help="the faults' random seed")
    parser.add_argument("--faults", type=int, default=8)
    # A fault ends an attempt within about --max-delay of its first step; at
    # ~110 steps/s on an idle 2-core machine that is up to ~70 steps with the
    # start-up, so 100 steps a fault leave the job running until the last
    # (with 1.5 s and 40 a fault, a CI run's job ended after two faults).
    parser.add_argument("--steps", type=int, default=0, help="the job's steps (default: 100 a fault, at least 800)")
    parser.add_argument("--max-delay", type=float, default=0.5,
                        help="a fault comes up to this many seconds after the attempt's first step")
    parser.add_argument("--work", help="keep everything here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    args.steps = args.steps or max(800, 100 * args.faults)
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    work = args.work or tempfile.mkdtemp(prefix="chaos-soak-")
    os.makedirs(work, exist_ok=True)
    for old in ("reference", "soak"):  # a reused --work starts afresh
        shutil.rmtree(os.path.join(work, old), ignore_errors=True)
    try:
        soak(args, work)
    finally:
        kill_everything(work)
    if not args.work:
        shutil.rmtree(work)


def soak(args, work):
    rng = random.Random(args.seed)
    first_four = rng.sample(list(SIGNALS), len(SIGNALS))
    started = time.time()

    reference = Job(args, os.path.join(work, "reference"), os.path.join(work, "reference.log"),
                    ["--export", os.path.join(work, "reference.pt")])
    if reference.wait(600) != 0:
        fail(f"the uninterrupted run failed (see {reference.log_path})")
    reference_seconds = time.time() - started

    out_dir = os.path.join(work, "soak")
    weights = os.path.join(work, "soak.pt")
    counts = {name: 0 for name in SIGNALS}
    attempt = 0
    # Where the next attempt must resume: exactly at a preemption's step;
    # after a kill, at the newest checkpoint written so far or later.
    resume_at, resume_at_least = None, None
    newest = None  # the newest checkpoint step announced so far

    def check_resume(text, what):
        resumed = re.search(r"resuming from \S+ at step (\d+) of", text)
        step = int(resumed.group(1)) if resumed else None
        if resume_at is not None and step != resume_at:
            fail(f"{what}: resumed at step {step}, wanted the preemption's step {resume_at}")
        if resume_at_least is not None and (step is None or step < resume_at_least):
            fail(f"{what}: resumed at step {step}, before the newest checkpoint, step {resume_at_least}")
        return step
    while sum(counts.values()) < args.faults:
        attempt += 1
        extra = ["--export", weights] + (["--resume", "auto"] if attempt > 1 else [])
        job = Job(args, out_dir, os.path.join(work, f"attempt-{attempt}.log"), extra)
        first_step_by = time.time() + 120
        while not job.trained_a_step():
            if job.process.poll() is not None:
                fail(f"attempt {attempt} ended before its first step (see {job.log_path})")
            if time.time() > first_step_by:
                fail(f"attempt {attempt} trained no step in 120 s (see {job.log_path})")
            time.sleep(0.02)
        # Every kind once in the first four faults, in a random order; then at random.
        done = sum(counts.values())
        name = first_four[done] if done < 4 else rng.choice(list(SIGNALS))
        rank = rng.randrange(2)
        time.sleep(rng.uniform(0, args.max_delay))
        pid = job.rank_pid(rank)
        if pid is not None:
            try:
                os.kill(pid, SIGNALS[name])
            except ProcessLookupError:
                pid = None
        if pid is None:
            code = job.wait(60)
            if code == 0:
                fail(f"the job completed before fault {sum(counts.values()) + 1}: raise --steps")
            fail(f"attempt {attempt}: rank {rank} was gone before its fault (exit {code}; see {job.log_path})")
        code = job.wait(120)
        with open(job.log_path) as log:
            text = log.read()
        stopped = re.search(r"preempted at step (\d+);", text)
        if name == "SIGKILL":
            if code == 0:
                fail(f"attempt {attempt}: kill -9 of rank {rank}, and the job exited 0")
            outcome = f"exit {code}"
        elif code == 0 and re.search(r"^done:", text, re.M):
            fail(f"the job completed before fault {sum(counts.values()) + 1} took effect: raise --steps")
        elif code != PREEMPTED or not stopped:
            fail(f"attempt {attempt}: {name} to rank {rank}: exit {code}, wanted {PREEMPTED} and a preemption line "
                 f"(see {job.log_path})")
        else:
            outcome = f"preempted at step {stopped.group(1)}"
        resumed = check_resume(text, f"attempt {attempt}")
        written = [int(step) for step in re.findall(r"^checkpoint step (\d+):", text, re.M)]
        newest = max(written + ([newest] if newest is not None else []), default=None)
        if stopped:
            resume_at, resume_at_least = int(stopped.group(1)), None
        else:  # a kill: a checkpoint may have landed after its last line
            resume_at, resume_at_least = None, newest
        no_process_left(out_dir, f"attempt {attempt}")
        counts[name] += 1
        print(f"fault {sum(counts.values())}: {name} to rank {rank} "
              f"(attempt {attempt}, {'from the start' if resumed is None else f'resumed at step {resumed}'}): "
              f"{outcome}", flush=True)

    attempt += 1
    last = Job(args, out_dir, os.path.join(work, f"attempt-{attempt}.log"), ["--export", weights, "--resume", "auto"])
    if last.wait(600) != 0:
        fail(f"the last attempt failed (see {last.log_path})")
    with open(last.log_path) as log:
        if check_resume(log.read(), "the last attempt") is None:
            fail("the last attempt started from the beginning instead of resuming")

    with open(os.path.join(work, "reference.pt"), "rb") as a, open(weights, "rb") as b:
        if a.read() != b.read():
            fail("the exported weights differ from the uninterrupted run's")
    want, got = train_records(reference.out_dir), train_records(out_dir)
    steps = [record["step"] for record in got]
    if len(steps) != len(set(steps)):
        fail(f"metrics.jsonl repeats train records: steps {sorted(s for s in set(steps) if steps.count(s) > 1)}")
    if got != want:
        missing = sorted({r["step"] for r in want} - set(steps))
        fail(f"metrics.jsonl's train records differ from the uninterrupted run's (missing steps {missing[:10]})")
    with open(os.path.join(out_dir, "summary.json")) as file:
        status = json.load(file)["status"]
    if status != "completed":
        fail(f"summary.json says {status}")
    print(f"chaos soak: {sum(counts.values())} faults in {attempt} attempts "
          f"({', '.join(f'{n} {name}' for name, n in counts.items())}), seed {args.seed}, {args.steps} steps; "
          f"weights bitwise equal, {len(got)} train records each once and equal, completed; "
          f"{time.time() - started:.0f} s in all (the uninterrupted run {reference_seconds:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
