# The Slurm end-to-end test (docs/cluster.md): a real one-node Slurm cluster
# from Debian's slurm-wlm and munge, its config in a temporary folder
# (SLURM_CONF). The real cluster/slurm/train.sbatch runs a 2-task job, which
# is signalled mid-run with scancel --signal=USR1. Checked: the job was
# requeued, resumed from its checkpoint, completed, and its final weights
# equal an uninterrupted run's bitwise. Then cluster/slurm/sweep.sbatch runs
# a 2-line sweep as a job array, and the study driver (study/study.py
# --executor slurm) a 2-run study through it. The cluster is torn down afterwards.
#   bash tests/cluster/slurm_e2e.sh DTRAIN [MPIRUN]
# Exit 77 (skipped, with the reason) where this machine lacks what a cluster
# needs (root, the packages); under CI=true, which has both, that fails too.
# A daemon that does not start, or a node that never comes up, always fails:
# a broken slurm.conf must not pass as a skip. Waits end on the event or
# when the job leaves its state; their bounds only catch a hang.
set -euo pipefail
DTRAIN=$(realpath "${1:?path to the dtrain binary}")
MPIRUN_BIN=${2:-mpirun}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
skip() {
  [ "${CI:-}" != true ] || fail "skipped under CI=true, where it must run: $*"
  echo "skip: $*"
  exit 77
}
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }
[ "$(id -u)" -eq 0 ] || skip "starting slurmd and munged needs root"
for tool in munged slurmctld slurmd sbatch srun scontrol scancel sinfo; do
  command -v "$tool" >/dev/null || skip "$tool is missing: launch/setup.sh installs slurm-wlm and munge"
done
[ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/mpi_pmix.so ] || skip "Slurm's PMIx plugin is missing"

T=$(mktemp -d /tmp/dtrain-slurm.XXXXXX)
export SLURM_CONF=$T/slurm.conf
started=$(date +%s)
teardown() {
  scancel --quiet --full $(squeue -h -o %i 2>/dev/null) 2>/dev/null || true
  for pid_file in "$T/slurmd.pid" "$T/slurmctld.pid" "$T/munge/munged.pid"; do
    [ -f "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null || true
  done
  sleep 0.5
  if [ "${KEEP_SLURM_LOGS:-0}" = 1 ]; then echo "logs kept in $T"; else rm -rf "$T"; fi
}
trap teardown EXIT

# --- A one-node cluster --------------------------------------------------
mkdir -p "$T"/{state,spool,munge,runs}
chmod 700 "$T/munge"
head -c 1024 /dev/urandom >"$T/munge/munge.key"
chmod 400 "$T/munge/munge.key"
munged --key-file="$T/munge/munge.key" --socket="$T/munge/munge.sock" --pid-file="$T/munge/munged.pid" \
  --log-file="$T/munge/munged.log" --seed-file="$T/munge/munge.seed" --force \
  || fail "munged does not start ($(tail -1 "$T/munge/munged.log" 2>/dev/null))"
host=$(hostname -s)
# Free ports, away from a system Slurm's 6817/6818.
port=$(( 20000 + RANDOM % 20000 ))
cat >"$SLURM_CONF" <<CONF
ClusterName=dtraintest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$T/munge/munge.sock
SlurmctldPort=$port
SlurmdPort=$((port + 1))
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
MinJobAge=600
KillWait=10
NodeName=$host CPUs=4 State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
slurmctld -f "$SLURM_CONF" || fail "slurmctld does not start ($(tail -1 "$T/slurmctld.log" 2>/dev/null))"
slurmd -f "$SLURM_CONF" || fail "slurmd does not start ($(tail -1 "$T/slurmd.log" 2>/dev/null))"
for _ in $(seq 600); do
  [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break
  sleep 0.1
done
[ "$(sinfo -h -o %T 2>/dev/null)" = idle ] || { tail -5 "$T/slurmctld.log" "$T/slurmd.log"; fail "the node never became idle"; }
pass "one-node cluster up on $host (ports $port, $((port + 1)))"

job_state() { scontrol show job "$1" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
job_field() { scontrol show job "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
wait_state() {  # JOB STATE SECONDS
  local i
  for i in $(seq $(( $3 * 10 ))); do
    [ "$(job_state "$1")" = "$2" ] && return 0
    sleep 0.1
  done
  return 1
}
# Until OUT/metrics.jsonl has step STEP; fails when the job is over first
# (any state but pending or running) or after 300 s.
wait_step() {  # JOB OUT STEP
  local deadline=$((SECONDS + 300)) state
  until grep -q "\"step\":$3," "$2/metrics.jsonl" 2>/dev/null; do
    state=$(job_state "$1")
    case "$state" in PENDING|CONFIGURING|RUNNING) ;; *) echo "job $1 is $state before step $3"; return 1 ;; esac
    [ "$SECONDS" -lt "$deadline" ] || { echo "job $1 not at step $3 after 300 s"; return 1; }
    sleep 0.1
  done
}

# --- train.sbatch: preempted, requeued, resumed, completed ------------------
cat >"$T/job.ini" <<'INI'
dataset = synthetic
synthetic-train-samples = 4096
synthetic-test-samples = 256
micro-batch-size = 16
global-batch-size = 64
epochs = 10
hidden = 128,64
optimizer = adamw
schedule = cosine
warmup-steps = 20
log-every = 8
checkpoint-every = 40
# Pinned, so that the reference under mpirun computes alike.
threads = 1
overlap = false
INI
cd "$ROOT"
export DTRAIN DTRAIN_OUT_ROOT=$T/runs
job=$(sbatch --parsable -n 2 --output="$T/job-%j.out" cluster/slurm/train.sbatch "$T/job.ini" --export "$T/slurm.pt")
out=$T/runs/dtrain-$job
# A step record: every task has its preemption handlers installed.
wait_step "$job" "$out" 80 || { cat "$T/job-$job.out"; fail "job $job never reached step 80"; }
signalled=$(date +%s)
scancel --signal=USR1 "$job"
# The job requeues itself and waits for its begin time (~2 minutes): release it.
for _ in $(seq 1200); do
  [ "$(job_field "$job" Restarts)" = 1 ] && [ "$(job_state "$job")" = PENDING ] && break
  sleep 0.1
done
[ "$(job_field "$job" Restarts)" = 1 ] || { cat "$T/job-$job.out"; fail "job $job was not requeued"; }
grep -q "preempted at step [0-9]*; checkpoint $out/checkpoints/step-" "$T/job-$job.out" || fail "no preemption line"
stopped=$(sed -n 's/.*preempted at step \([0-9]*\);.*/\1/p' "$T/job-$job.out")
pass "job $job: scancel --signal=USR1 stopped both tasks at step $stopped (exit 75); the job requeued itself"
# Release it once the first run's step is gone (its PMIx socket with it).
for _ in $(seq 1200); do
  pgrep -f "slurmstepd: \[$job\." >/dev/null || break
  sleep 0.1
done
! pgrep -f "slurmstepd: \[$job\." >/dev/null || fail "job $job: the first run's step still there 120 s after it ended"
scontrol update JobId="$job" StartTime=now
wait_state "$job" COMPLETED 400 || { cat "$T/job-$job.out"; fail "job $job did not complete (state $(job_state "$job"))"; }
grep -q "resuming from $out/checkpoints/step-0*$stopped at step $stopped of 640" "$T/job-$job.out" \
  || { cat "$T/job-$job.out"; fail "job $job did not resume from its step-$stopped checkpoint"; }
grep -q '"status": "completed"' "$out/summary.json" || fail "summary status is not completed"
[ "$(grep -c ' start (restart ' "$out/job.log")" -eq 2 ] || fail "job.log does not hold both starts"
grep -q "start (restart 0)" "$T/job-$job.out" && grep -q "start (restart 1)" "$T/job-$job.out" \
  || fail "the job's output did not append across the restart"
pass "job $job: resumed from step $stopped after the requeue and completed; logs appended"
# The uninterrupted reference, same split and threads.
timeout 300 "$MPIRUN_BIN" --oversubscribe --bind-to none -np 2 "$DTRAIN" --config "$T/job.ini" --out-dir "$T/ref" \
  --export "$T/ref.pt" >"$T/ref.log" 2>&1 || { cat "$T/ref.log"; fail "the reference run failed"; }
cmp -s "$T/ref.pt" "$T/slurm.pt" || fail "the requeued job's weights differ from an uninterrupted run's"
pass "final weights equal the uninterrupted run's bitwise"

# --- sweep.sbatch: one array task per line ----------------------------------
cat >"$T/sweep.txt" <<'SWEEP'
# global batch and LR rule
--global-batch-size 64 --lr-scaling linear --checkpoint-every 0 --epochs 1 --export-dummy-never-used

--global-batch-size 128 --lr-scaling sqrt --checkpoint-every 0 --epochs 1
SWEEP
sed -i 's/ --export-dummy-never-used//' "$T/sweep.txt"
array=$(sbatch --parsable --array=1-2 -n 1 --output="$T/sweep-%A_%a.out" cluster/slurm/sweep.sbatch "$T/job.ini" "$T/sweep.txt")
for task in 1 2; do
  wait_state "${array}_$task" COMPLETED 300 || { cat "$T/sweep-${array}_$task.out"; fail "array task $task did not complete"; }
done
grep -q '"global_batch_size": 64,' "$T/runs/dtrain-sweep-${array}_1/summary.json" || fail "task 1 did not run line 1"
grep -q '"global_batch_size": 128,' "$T/runs/dtrain-sweep-${array}_2/summary.json" || fail "task 2 did not run line 2"
grep -q "lr-scaling = sqrt" "$T/sweep-${array}_2.out" || fail "task 2 did not get --lr-scaling sqrt"
pass "sweep array $array: one task per line, each in its own out dir"

# --- The study driver's Slurm executor: lines with their own --out-dir -------
cat >"$T/study-base.ini" <<'INI'
dataset = synthetic
synthetic-train-samples = 2048
synthetic-test-samples = 256
validation-size = 256
hidden = 64
threads = 1
log-every = 5
INI
cat >"$T/study.ini" <<INI
[study]
base-config = $T/study-base.ini
target = val_accuracy:0.3
budget = steps:40
options = --eval-schedule geometric:2 --noise-scale true
checkpoint-every = 20
[grid]
global-batch-sizes = 32, 64
lr-multipliers = 1
INI
/usr/bin/python3 study/study.py "$T/study.ini" --executor slurm --wait --poll-seconds 0.5 --out "$T/study" \
  --dtrain "$DTRAIN" >"$T/study.log" 2>&1 || { cat "$T/study.log"; fail "the slurm study failed"; }
for run in b00032-linear-x1-sgd-s0 b00064-linear-x1-sgd-s0; do
  grep -q '"status": "completed"' "$T/study/runs/$run/summary.json" || { cat "$T/study.log"; fail "$run did not complete"; }
  grep -q "dtrain exited 0" "$T/study/runs/$run/job.log" || fail "$run has no job.log of its own"
done
[ "$(grep -c ',completed,' "$T/study/results.csv")" -eq 2 ] || { cat "$T/study/results.csv"; fail "results.csv"; }
/usr/bin/python3 study/study.py "$T/study.ini" --executor slurm --out "$T/study" --dtrain "$DTRAIN" >"$T/study2.log" 2>&1 \
  || { cat "$T/study2.log"; fail "the slurm study's rerun failed"; }
[ "$(grep -c '^skip ' "$T/study2.log")" -eq 2 ] && ! grep -q "submitted job array" "$T/study2.log" \
  || { cat "$T/study2.log"; fail "the rerun submitted finished runs again"; }
pass "study driver on Slurm: one array, each run in its own folder; a rerun submits nothing"
# --- A killed task: srun --kill-on-bad-exit ends the job ----------------------
job=$(sbatch --parsable -n 2 --output="$T/kill-%j.out" cluster/slurm/train.sbatch "$T/job.ini" --epochs 50)
out=$T/runs/dtrain-$job
wait_step "$job" "$out" 80 || { cat "$T/kill-$job.out"; fail "job $job never reached step 80"; }
victim=
for pid in $(pgrep -f -- "dtrain --config $T/job.ini --out-dir $out" || true); do
  tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "SLURM_PROCID=1" && victim=$pid
done
[ -n "$victim" ] || { cat "$T/kill-$job.out"; fail "could not find task 1 of job $job"; }
killed_at=$(date +%s)
kill -9 "$victim"
# Without --kill-on-bad-exit the other task would wait in a collective until
# --collective-timeout (600 s): 90 s leaves a margin for a loaded machine.
wait_state "$job" FAILED 90 || fail "job $job was not over 90 s after kill -9 of a task (state $(job_state "$job"))"
pass "kill -9 of task 1: job $job failed in $(( $(date +%s) - killed_at )) s, not requeued ($(job_field "$job" Restarts) restarts)"

echo "slurm: all passed in $(( $(date +%s) - started )) s (signal to completion: $(( $(date +%s) - signalled )) s incl. the reference and sweep)"
