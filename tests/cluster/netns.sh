# Two nodes on one machine, and faults between them (docs/reliability.md,
# "Faults between nodes"). Two network namespaces joined by a veth pair are
# two "nodes" with their own addresses; Open MPI starts a daemon in each
# through an rsh agent that runs `ip netns exec NODE`, with mpirun inside the
# first, and the ranks talk TCP over the veth subnet only (pml ob1, btl
# tcp,self). Ranks wrapped in `ip netns exec` under one mpirun cannot work:
# their PMIx server is on the host's loopback, which is per namespace.
#
# These kernels have no netem, so the faults are nftables rules in the second
# node's namespace: 5% random loss each way, or every packet dropped (a cut
# link); where the kernel has netem, also latency. The cases, each against
# a clean run of the same job:
#   - the job crossed the link: the veth counters, and --display-map shows two nodes;
#   - 5% loss for a whole (shorter) run: completes, bitwise equal; the slowdown is printed;
#   - a 20 ms round trip, where netem exists (a note where it does not): the same;
#   - a 5 s cut mid-run, --collective-timeout 60: completes, bitwise equal;
#   - a 5 s cut, --collective-timeout 3: ends within the timeout + 30 s, a
#     line from the watchdog on every rank that fired, naming the collective,
#     and no process left; the same with the cut at a checkpoint;
#   - a cut for good: the same, then --resume auto on a healthy link
#     continues from the last checkpoint, bitwise equal.
# Open MPI's out-of-band keepalive is short (5 s idle, then 5 probes 2 s
# apart: a lost daemon is noticed within 15 s), or its daemons outlive a cut
# by minutes. With 3 probes, 5% loss each way (a probe or its answer lost
# one time in ten) ended a daemon in a 3-minute run.
#   bash tests/cluster/netns.sh DTRAIN [MPIRUN]        (as root; skips otherwise)
source "$(dirname "$0")/../e2e/common.sh"

[ "$(id -u)" -eq 0 ] || skip_or_fail "network namespaces need root"
command -v ip >/dev/null && command -v nft >/dev/null || skip_or_fail "needs ip (iproute2) and nft (nftables)"

# Names short enough for interfaces (15 characters), unique per run.
NODE0=dtn$$a NODE1=dtn$$b
VETH0=dtv$$a VETH1=dtv$$b
SUBNET=10.77.0.0/24 ADDR0=10.77.0.1 ADDR1=10.77.0.2
cleanup() {
  local node
  pkill -KILL -f -- "--out-dir $WORK/" 2>/dev/null || true
  for node in "$NODE0" "$NODE1"; do
    ip netns pids "$node" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$node" 2>/dev/null || true
  done
  ip link del "$VETH0" 2>/dev/null || true  # if it never left the host's namespace
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NODE0" && ip netns add "$NODE1" || skip_or_fail "cannot create network namespaces here"
ip link add "$VETH0" type veth peer name "$VETH1"
ip link set "$VETH0" netns "$NODE0"
ip link set "$VETH1" netns "$NODE1"
ip -n "$NODE0" addr add "$ADDR0/24" dev "$VETH0"
ip -n "$NODE1" addr add "$ADDR1/24" dev "$VETH1"
for node in "$NODE0" "$NODE1"; do ip -n "$node" link set lo up; done
# A peer that stops answering while data is unacknowledged (mpirun's abort
# message to a cut-off daemon) is dropped after tcp_retries2 retransmissions:
# by default 15, about 15 minutes; 5 is about 12.6 s, which still outlasts a
# 5 s cut (a retransmission 6.2 s in). The setting is per namespace, as it
# would be per node.
for node in "$NODE0" "$NODE1"; do ip netns exec "$node" sysctl -q -w net.ipv4.tcp_retries2=5; done
ip -n "$NODE0" link set "$VETH0" up
ip -n "$NODE1" link set "$VETH1" up

# The rsh agent: Open MPI calls it as AGENT HOST COMMAND...; a host is a
# namespace. Each node gets its own temporary folder, as real nodes have: the
# two daemons share a hostname, and in one /tmp they write the same session
# files (hwloc's shared topology crashed a daemon, PMIx's store failed).
cat >"$WORK/agent.sh" <<'SH'
#!/bin/sh
node=$1
shift
export OMPI_MCA_orte_tmpdir_base="${0%/*}/tmp-$node"
mkdir -p "$OMPI_MCA_orte_tmpdir_base"
exec ip netns exec "$node" /bin/sh -c "$*"
SH
chmod +x "$WORK/agent.sh"
printf '%s slots=2\n%s slots=2\n' "$NODE0" "$NODE1" >"$WORK/hosts"
# Each rank's output in a file on its own node: a cut-off node's output
# never reaches mpirun.
cat >"$WORK/rank.sh" <<'SH'
#!/bin/sh
prefix=$1
shift
exec "$@" >"$prefix.rank$OMPI_COMM_WORLD_RANK.log" 2>&1
SH
chmod +x "$WORK/rank.sh"

since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# node_mpirun LIMIT_S ARGS...: 4 ranks, 2 per node, mpirun in the first node.
node_mpirun() {
  local limit=$1
  shift
  timeout -k 5 "$limit" ip netns exec "$NODE0" "$MPIRUN_BIN" --hostfile "$WORK/hosts" -np 4 --bind-to none \
    --mca plm_rsh_agent "$WORK/agent.sh" --mca pml ob1 --mca btl tcp,self \
    --mca btl_tcp_if_include "$SUBNET" --mca oob_tcp_if_include "$SUBNET" \
    --mca oob_tcp_keepalive_time 5 --mca oob_tcp_keepalive_intvl 2 --mca oob_tcp_keepalive_probes 5 "$@"
}

# The faults: an nftables table in the second node dropping what `rule` says
# on its veth end, both ways (its loopback, which its ranks and daemon use
# among themselves, is untouched).
fault() {  # RULE (e.g. "numgen random mod 100 < 5" or "" for everything)
  ip netns exec "$NODE1" nft -f - <<NFT
table inet dtrain_fault {
  chain input { type filter hook input priority 0; iifname "$VETH1" $1 counter drop; }
  chain output { type filter hook output priority 0; oifname "$VETH1" $1 counter drop; }
}
NFT
}
dropped() {  # packets the fault dropped so far
  ip netns exec "$NODE1" nft list table inet dtrain_fault | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' \
    | awk '{s += $1} END {print s + 0}'
}
heal() { ip netns exec "$NODE1" nft delete table inet dtrain_fault; }
veth_bytes() {
  local rx tx
  rx=$(ip netns exec "$NODE0" cat "/sys/class/net/$VETH0/statistics/rx_bytes")
  tx=$(ip netns exec "$NODE0" cat "/sys/class/net/$VETH0/statistics/tx_bytes")
  echo $((rx + tx))
}
# No process of the job left on either node, its ranks and its daemons, by
# SECONDS_DEADLINE.
no_process_left() {  # OUT_DIR WHAT
  local left
  while :; do
    left="$(pgrep -f -- "--out-dir $1( |\$)" || true) $(ip netns pids "$NODE0"; ip netns pids "$NODE1")"
    [ -n "${left// /}" ] || return 0
    [ "$SECONDS" -lt "$SECONDS_DEADLINE" ] || break
    sleep 0.5
  done
  ps -o pid,args -p $left >&2 || true
  fail "$2: processes left"
}

# The job: the MLP on synthetic data, global batch 64 = 4 ranks x micro 16,
# 300 steps, a checkpoint every 100.
cat >"$WORK/job.ini" <<'INI'
dataset = synthetic
synthetic-train-samples = 6400
synthetic-test-samples = 256
global-batch-size = 64
micro-batch-size = 16
epochs = 3
hidden = 64
optimizer = adamw
lr = 0.001
log-every = 20
eval-every = 150
checkpoint-every = 100
keep-checkpoints = 10
threads = 1
seed = 7
INI
JOB=(--config "$WORK/job.ini")
STEPS=300

# --- The clean run: two nodes, the bytes on the link -------------------------
before=$(veth_bytes)
started=$(date +%s.%N)
node_mpirun 300 --display-map "$DTRAIN" "${JOB[@]}" --out-dir "$WORK/clean" --export "$WORK/clean.pt" \
  >"$WORK/clean.log" 2>&1 || { cat "$WORK/clean.log"; fail "the clean two-node run failed"; }
clean_s=$(since "$started")
crossed=$(( $(veth_bytes) - before ))
for node in "$NODE0" "$NODE1"; do
  grep -q "Data for node: $node[[:space:]].*Num procs: 2" "$WORK/clean.log" \
    || { cat "$WORK/clean.log"; fail "--display-map does not show 2 ranks on $node"; }
done
# Each step's all-reduce moves the whole gradient across the link at least
# once (4 bytes a parameter).
parameters=$("$PYTHON" -c "import sys, torch; print(sum(t.numel() for t in torch.load(sys.argv[1]).values()))" \
  "$WORK/clean.pt")
[ "$crossed" -ge $((STEPS * parameters * 4)) ] \
  || fail "only $crossed bytes crossed the veth pair in $STEPS steps of $parameters parameters"
pass "clean run on 2 nodes x 2 ranks in $clean_s s: --display-map shows both nodes; $crossed bytes crossed the link ($(( crossed / (STEPS * parameters * 4) ))x one gradient a step)"

# --- 5% packet loss for the whole run ------------------------------------------
# A shorter run (its first 100 steps), against the clean run's checkpoint of
# step 100: each lost packet costs a retransmission timeout.
fault "numgen random mod 100 < 5"
started=$(date +%s.%N)
node_mpirun 300 "$DTRAIN" "${JOB[@]}" --max-steps 100 --out-dir "$WORK/loss" >"$WORK/loss.log" 2>&1 \
  || { cat "$WORK/loss.log"; fail "the run with 5% packet loss failed"; }
loss_s=$(since "$started")
lost=$(dropped)
heal
[ "$lost" -gt 0 ] || fail "the loss rule dropped no packet"
grep -q '"status": "completed"' "$WORK/loss/summary.json" || fail "5% packet loss: the run did not complete"
step100=checkpoints/step-00000100/model.pt
cmp -s "$WORK/clean/$step100" "$WORK/loss/$step100" || fail "5% packet loss: the weights of step 100 differ from the clean run's"
pass "5% packet loss each way ($lost packets dropped): 100 steps in $loss_s s ($(ratio "$loss_s" "$(ratio "$clean_s" 3)")x the clean run's pace), bitwise equal"

# --- Latency, where the kernel has netem ---------------------------------------
# 10 ms each way on the veth pair (a 20 ms round trip), for 100 steps.
if netem=$(ip netns exec "$NODE1" tc qdisc add dev "$VETH1" root netem delay 10ms 2>&1) &&
   netem=$(ip netns exec "$NODE0" tc qdisc add dev "$VETH0" root netem delay 10ms 2>&1); then
  started=$(date +%s.%N)
  node_mpirun 300 "$DTRAIN" "${JOB[@]}" --max-steps 100 --out-dir "$WORK/latency" >"$WORK/latency.log" 2>&1 \
    || { cat "$WORK/latency.log"; fail "the run with 20 ms of latency failed"; }
  latency_s=$(since "$started")
  ip netns exec "$NODE1" tc qdisc del dev "$VETH1" root
  ip netns exec "$NODE0" tc qdisc del dev "$VETH0" root
  cmp -s "$WORK/clean/$step100" "$WORK/latency/$step100" \
    || fail "20 ms of latency: the weights of step 100 differ from the clean run's"
  pass "a 20 ms round trip: 100 steps in $latency_s s ($(ratio "$latency_s" "$(ratio "$clean_s" 3)")x the clean run's pace), bitwise equal"
else
  ip netns exec "$NODE1" tc qdisc del dev "$VETH1" root 2>/dev/null || true
  echo "note: no latency case: this kernel has no netem (tc: ${netem//$'\n'/ })"
fi

# cut_mid_run NAME AT_STEP TIMEOUT CUT_S [ARGS...]: starts the job, cuts the
# link once rank 0 has logged step AT_STEP, for CUT_S seconds (0: for good),
# and waits for the job. Step 120 is 80 steps from the next checkpoint; at
# step 100, rank 0 logs the step and then writes a checkpoint, so the cut
# comes in its agreement's all-gathers, which the watchdog watches too.
show() { tail -n 20 "$WORK/$1.log" "$WORK/$1".rank*.log >&2; }
cut_mid_run() {
  local name=$1 at=$2 timeout=$3 cut=$4
  shift 4
  node_mpirun 300 "$WORK/rank.sh" "$WORK/$name" "$DTRAIN" "${JOB[@]}" --collective-timeout "$timeout" \
    --out-dir "$WORK/$name" "$@" >"$WORK/$name.log" 2>&1 &
  local job=$!
  wait_for_step "$WORK/$name" "$at" $job || { show "$name"; fail "$name: never reached step $at"; }
  fault ""
  cut_at=$(date +%s.%N)
  local landed
  landed=$(grep -o '"step":[0-9]*' "$WORK/$name/metrics.jsonl" | tail -n 1 | cut -d: -f2)
  [ "${landed:-0}" -lt $((at + 80)) ] || fail "$name: the cut came at step $landed, 80 or more steps after step $at"
  SECONDS_DEADLINE=$((SECONDS + 33))
  if [ "$cut" -gt 0 ]; then
    sleep "$cut"
    heal
  fi
  code=0
  wait $job || code=$?
  ended_s=$(since "$cut_at")
  [ "$cut" -gt 0 ] || heal
}

# --- A 5 s cut, and a timeout that outlasts it ----------------------------------
cut_mid_run cut60 120 60 5 --export "$WORK/cut60.pt"
[ "$code" -eq 0 ] || { show cut60; fail "a 5 s cut with --collective-timeout 60: exit $code"; }
cmp -s "$WORK/clean.pt" "$WORK/cut60.pt" || fail "a 5 s cut: the weights differ from the clean run's"
pass "link cut for 5 s at step 120, --collective-timeout 60: completed $ended_s s after the cut, bitwise equal"

# expect_watchdog NAME WHAT: the job failed within the timeout + 30 s; each
# rank's "dtrain: error" lines are its watchdog's, at most one naming the
# collective; the cut-off node's two ranks each wrote it (nothing but their
# own watchdogs could end them); nothing is left on either node 33 s after
# the cut.
expect_watchdog() {
  local name=$1 what=$2
  [ "$code" -ne 0 ] || { show "$name"; fail "$what: the job succeeded"; }
  [ "$code" -ne 124 ] && [ "$code" -ne 137 ] || { show "$name"; fail "$what: the job hung until killed"; }
  awk -v s="$ended_s" 'BEGIN { exit !(s < 33) }' || { show "$name"; fail "$what: the job ended $ended_s s after the cut"; }
  local pattern="^dtrain: error: rank [0-3]: the [a-z -]* at step [0-9]* has not completed after 3 s (--collective-timeout)"
  local rank lines log
  fired=()
  for rank in 0 1 2 3; do
    log=$WORK/$name.rank$rank.log
    grep "^dtrain: error:" "$log" | grep -v -e "$pattern" -e "the abort did not end the process" \
      && { show "$name"; fail "$what: rank $rank wrote an error line that is not the watchdog's"; }
    lines=$(grep -c "$pattern" "$log" || true)
    [ "$lines" -le 1 ] || { show "$name"; fail "$what: rank $rank wrote $lines watchdog lines"; }
    [ "$lines" -eq 0 ] || fired+=("$rank")
  done
  for rank in 2 3; do
    [[ " ${fired[*]} " == *" $rank "* ]] || { show "$name"; fail "$what: no watchdog line from rank $rank"; }
  done
  no_process_left "$WORK/$name" "$what"
  collective=$(grep -h -o "the [a-z -]* at step [0-9]*" "$WORK/$name".rank*.log | head -n 1 || true)
  fired_ranks="${fired[*]}"
}

# --- A 5 s cut, and a shorter timeout -------------------------------------------
cut_mid_run cut3 120 3 5
expect_watchdog cut3 "a 5 s cut with --collective-timeout 3"
pass "link cut for 5 s, --collective-timeout 3: exit $code $ended_s s after the cut; watchdog lines from ranks $fired_ranks ($collective); nothing left"
cut_mid_run checkpoint 100 3 5
expect_watchdog checkpoint "a 5 s cut at a checkpoint with --collective-timeout 3"
pass "link cut for 5 s at a checkpoint (step 100), --collective-timeout 3: exit $code $ended_s s after the cut; watchdog lines from ranks $fired_ranks ($collective); nothing left"

# --- A cut for good, then --resume auto on a healthy link ---------------------------
cut_mid_run forever 120 3 0 --export "$WORK/forever.pt"
expect_watchdog forever "a cut for good"
checkpoint=$(ls "$WORK/forever/checkpoints" 2>/dev/null | grep -E '^step-[0-9]{8}$' | tail -n 1 || true)
[ -n "$checkpoint" ] || fail "a cut for good: no checkpoint to resume from"
node_mpirun 300 "$DTRAIN" "${JOB[@]}" --out-dir "$WORK/forever" --resume auto --export "$WORK/forever.pt" \
  >"$WORK/resume.log" 2>&1 || { cat "$WORK/resume.log"; fail "--resume auto after a cut for good failed"; }
expect_resumed "$WORK/resume.log" "$WORK/forever/checkpoints" "$((10#${checkpoint#step-}))" "a cut for good"
cmp -s "$WORK/clean.pt" "$WORK/forever.pt" || fail "a cut for good, resumed: the weights differ from the clean run's"
pass "link cut for good, --collective-timeout 3: exit $code $ended_s s after the cut; watchdog lines from ranks $fired_ranks; nothing left; --resume auto from $checkpoint on a healthy link: bitwise equal"
echo "netns: all passed"
