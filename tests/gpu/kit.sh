#!/usr/bin/env bash
# The GPU acceptance kit (docs/gpu.md): dtrain's checks for a bare, offline
# GPU machine that has a driver, Python with a CUDA PyTorch and the NCCL
# wheel, nvcc, CMake and a C++ compiler, but none of Open MPI,
# Boost.Program_options, nlohmann-json, GoogleTest or Fashion-MNIST.
#
#   tests/gpu/kit.sh prepare          here (registries reachable): download the
#                                     Debian packages that machine lacks into
#                                     .gpu-kit/ with a manifest, add Fashion-MNIST
#                                     (stops if it is missing or does not fit),
#                                     and check what travels <= 64 MiB
#   tests/gpu/kit.sh run REPORT_DIR   there: unpack the kit under /tmp, build dtrain
#                                     against the machine's PyTorch and NCCL, run
#                                     the GPU checks, write REPORT_DIR/gpu-report.json
#                                     and REPORT_DIR/kit.log
#   tests/gpu/kit.sh rehearse [DIR]   here, without a GPU: the same unpack and build
#                                     with this machine's copies of the kit's packages
#                                     hidden (a private mount namespace), against the
#                                     CUDA LibTorch 2.x of launch/torch2_venv.sh; then
#                                     an ldd check and the CPU test suite (ctest),
#                                     relocated mpirun included
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KIT=${DTRAIN_GPU_KIT:-$ROOT/.gpu-kit}
PREFIX=${DTRAIN_GPU_KIT_PREFIX:-/tmp/dtrain-gpu-kit}  # fixed, so ccache hits across rehearsals
R=$PREFIX/root                                          # the unpacked packages
export ROOT KIT PREFIX R  # for the checks, which run in a shell of their own
LIMIT_MIB=64
MULTIARCH=x86_64-linux-gnu

# What the GPU machine lacks, and nothing of what it has (compiler, CMake,
# Python, CUDA): not the dependency closure (177 packages, gfortran included).
PACKAGES=(
  # Open MPI, its launcher and wrapper data, and its runtime libraries
  openmpi-bin libopenmpi3 libopenmpi-dev openmpi-common
  libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7
  libfabric1 libucx0 libibverbs1 librdmacm1 libnl-3-200 libnl-route-3-200
  libpsm-infinipath1 libpsm2-2 libmunge2
  # the CLI and config files, JSON, tests, gzip and SHA-256 headers
  libboost-program-options1.74.0 libboost-program-options1.74-dev libboost1.74-dev
  nlohmann-json3-dev libgtest-dev zlib1g-dev libssl-dev
  libxxhash-dev libdeflate-dev  # headers and a static library: nothing new to load
  # runtime libraries a base system usually has (carried in case it does not)
  libssl3 libudev1 libnuma1
)
# The last group is not hidden in the rehearsal: this machine's own tools
# (cmake, git, python) load them.
BASE_PACKAGES=" libssl3 libudev1 libnuma1 "

say() { echo "kit: $*"; }
die() { echo "kit: error: $*" >&2; exit 1; }

# Bytes of everything that travels: the tracked and untracked-not-ignored
# files of the checkout, and the kit.
travel_bytes() {
  local tree kit=0
  tree=$(cd "$ROOT" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  [ -d "$KIT" ] && kit=$(du -sb "$KIT" | cut -f1)
  echo $((tree + kit))
}

prepare() {
  mkdir -p "$KIT/debs"
  rm -f "$KIT"/debs/*.deb "$KIT/manifest.tsv"
  say "downloading ${#PACKAGES[@]} Debian packages into $KIT/debs"
  if ! (cd "$KIT/debs" && apt-get download -qq "${PACKAGES[@]}" 2>/dev/null); then
    apt-get update -qq
    (cd "$KIT/debs" && apt-get download -qq "${PACKAGES[@]}" 2>/dev/null) || die "apt-get download failed (are Debian's registries reachable?)"
  fi
  {
    printf 'package\tversion\tbytes\tsha256\n'
    for deb in "$KIT"/debs/*.deb; do
      printf '%s\t%s\t%s\t%s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" \
        "$(stat -c %s "$deb")" "$(sha256sum "$deb" | cut -d' ' -f1)"
    done
  } >"$KIT/manifest.tsv"
  [ "$(($(wc -l <"$KIT/manifest.tsv") - 1))" -eq "${#PACKAGES[@]}" ] || die "the manifest does not list every package"
  say "packages: $(du -sh "$KIT/debs" | cut -f1) (manifest: $KIT/manifest.tsv)"

  # The King James Bible as one verse a line, the documents --dataset kjv
  # reads (references stripped), for the language-model check as --dataset text.
  rm -f "$KIT/kjv.txt"
  if command -v bible >/dev/null; then
    bible -f gen1:1-rev22:21 | sed 's/^[^ ]* //' >"$KIT/kjv.txt"
    say "the King James Bible added ($(du -sh "$KIT/kjv.txt" | cut -f1), $(wc -l <"$KIT/kjv.txt") verses)"
  else
    say "no bible command (apt-get install bible-kjv): the language-model check will be skipped"
  fi

  # The default job's accuracy floor needs the real data: without it the
  # kit could not tell a working GPU job from one that learns nothing.
  rm -rf "$KIT/fashion-mnist"
  local fashion=/usr/share/datasets/fashion-mnist limit=$((LIMIT_MIB * 1024 * 1024))
  [ -f "$fashion/train-images-idx3-ubyte.gz" ] \
    || die "Fashion-MNIST is not installed here ($fashion; launch/setup.sh installs it): the default job's accuracy check needs it"
  local needed=$(( $(travel_bytes) + $(du -sb "$fashion" | cut -f1) ))
  [ "$needed" -le "$limit" ] \
    || die "Fashion-MNIST does not fit: the tree and the kit with it are $((needed / 1048576)) MiB, over $LIMIT_MIB MiB"
  mkdir -p "$KIT/fashion-mnist"
  cp "$fashion"/*-ubyte.gz "$KIT/fashion-mnist/"
  say "Fashion-MNIST added ($(du -sh "$KIT/fashion-mnist" | cut -f1))"
  local total
  total=$(travel_bytes)
  say "what travels (tree + kit): $((total / 1048576)) MiB of $LIMIT_MIB"
  [ "$total" -le "$limit" ] || die "the tree and the kit are $((total / 1048576)) MiB, over the $LIMIT_MIB MiB a device copy takes"
}

# Unpacks the kit's packages under $R (never onto /) and relinks the
# absolute symbolic links they carry (libz.so -> /lib/...) to the kit's copy
# or to the base system's library.
unpack() {
  [ -f "$KIT/manifest.tsv" ] || die "no kit in $KIT: run tests/gpu/kit.sh prepare first (where apt-get works)"
  if cmp -s "$KIT/manifest.tsv" "$R/.kit-manifest.tsv"; then
    say "the kit is already unpacked in $R"
    return 0
  fi
  rm -rf "$R"
  mkdir -p "$R"
  for deb in "$KIT"/debs/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$R"
    else  # a deb is an ar archive; Debian 12's data member is data.tar.xz
      (cd "$R" && ar p "$deb" data.tar.xz | tar -xJ)
    fi
  done
  local link target
  while IFS= read -r link; do
    target=$(readlink "$link")
    case "$target" in /*) ;; *) continue ;; esac
    if [ -e "$R$target" ]; then
      ln -sfn "$R$target" "$link"
    else  # e.g. libz.so.1.2.13 -> the system's libz.so.1
      local base=${target##*/}
      local soname=${base%%.so.*}.so.$(echo "${base#*.so.}" | cut -d. -f1)
      for dir in /lib/$MULTIARCH /usr/lib/$MULTIARCH /lib64 /usr/lib64; do
        [ -e "$dir/$soname" ] && { ln -sfn "$dir/$soname" "$link"; break; }
      done
    fi
  done < <(find "$R" -type l)
  # What update-alternatives would have made.
  for tool in mpirun mpiexec mpicc mpicxx; do ln -sfn "$tool.openmpi" "$R/usr/bin/$tool"; done
  cp "$KIT/manifest.tsv" "$R/.kit-manifest.tsv"
  say "unpacked $(ls "$KIT"/debs/*.deb | wc -l) packages into $R ($(du -sh "$R" | cut -f1))"
}

# The environment of the relocated Open MPI and PMIx, for running programs
# (not for the compiler or CMake: they keep the machine's own libraries).
kit_env() {
  local lib=$R/usr/lib/$MULTIARCH
  export OPAL_PREFIX=$R/usr OPAL_SYSCONFDIR=$R/etc/openmpi
  export PMIX_INSTALL_PREFIX=$lib/pmix2 PMIX_MCA_mca_base_component_path=$lib/pmix2/lib/pmix
  export PMIX_MCA_pcompress_base_silence_warning=1
  export PATH=$R/usr/bin:$PATH
  export LD_LIBRARY_PATH=$lib:$lib/openmpi/lib:$lib/pmix2/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 GTEST_COLOR=no
  # One host: shared memory and self; no InfiniBand or UCX probing.
  export OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1 OMPI_MCA_osc=^ucx OMPI_MCA_mtl=^ofi,psm,psm2
}

# configure_and_build PYTHON BUILD_DIR JOBS [TARGETS...]. Open MPI is named
# to CMake directly: its compiler wrapper would need the relocation
# environment, and that would reach CMake and the compiler too.
configure_and_build() {
  local python=$1 build=$2 jobs=$3
  shift 3
  local torch_cmake torch_root nccl_home generator=()
  torch_cmake=$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
  torch_root=$("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
  nccl_home=$("$python" -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null ||
    { [ -d "$torch_root/../nvidia/nccl" ] && cd "$torch_root/../nvidia/nccl" && pwd; } || true)
  [ -n "$nccl_home" ] || die "no NCCL next to PyTorch ($torch_root): install the nvidia-nccl wheel"
  say "PyTorch $("$python" -c 'import torch; print(torch.__version__)') at $torch_root; NCCL at $nccl_home"
  command -v ninja >/dev/null && [ ! -f "$build/Makefile" ] && generator=(-G Ninja)
  mkdir -p "$build"
  local lib=$R/usr/lib/$MULTIARCH
  cmake -S "$ROOT" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_cmake;$torch_root;$R/usr;$lib/cmake" \
    -DMPI_SKIP_COMPILER_WRAPPER=ON -DMPI_C_HEADER_DIR="$lib/openmpi/include" -DMPI_C_LIB_NAMES=mpi \
    -DMPI_mpi_LIBRARY="$lib/openmpi/lib/libmpi.so" -DMPIEXEC_EXECUTABLE="$R/usr/bin/mpirun.openmpi" \
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$lib:$lib/pmix2/lib" \
    -DCMAKE_CXX_FLAGS="-isystem $R/usr/include/$MULTIARCH" -DCMAKE_C_FLAGS="-isystem $R/usr/include/$MULTIARCH" \
    -DZLIB_ROOT="$R/usr" -DOPENSSL_ROOT_DIR="$R/usr" -DNCCL_HOME="$nccl_home" -DDTRAIN_WITH_NCCL=ON \
    >"$build/kit-configure.log" 2>&1 || { tail -40 "$build/kit-configure.log" >&2; die "configuring failed (log: $build/kit-configure.log)"; }
  grep -E "dtrain:" "$build/kit-configure.log" | sed 's/^/kit: /'
  local targets=()
  for target in "$@"; do targets+=(--target "$target"); done
  local start=$SECONDS
  local lock=()  # DTRAIN_BUILD_LOCK=FILE: wait for other builds on a small machine
  [ -n "${DTRAIN_BUILD_LOCK:-}" ] && lock=(flock "$DTRAIN_BUILD_LOCK")
  if ! "${lock[@]}" cmake --build "$build" -j"$jobs" "${targets[@]}" >"$build/kit-build.log" 2>&1; then
    grep -E "error|Error" "$build/kit-build.log" | head -30 >&2
    die "the build failed (log: $build/kit-build.log)"
  fi
  say "built in $((SECONDS - start)) s with $jobs jobs"
}

# Every library the binaries load comes from the kit, the PyTorch wheel, the
# CUDA toolkit or the base system (C and C++ runtimes, zlib, and the runtime
# group of PACKAGES); prints the offenders and fails otherwise.
check_libraries() {
  local python=$1 build=$2 site real bad=0
  site=$(cd "$("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')/.." && pwd)
  local base='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libutil|libstdc\+\+|libgcc_s|libz|libcrypto|libssl|libudev|libnuma)\.so'
  for binary in "$build/dtrain" "$build/tests/dtrain_unit_tests" "$build/tests/dtrain_mpi_tests"; do
    while read -r name arrow path _; do
      [ "$arrow" = "=>" ] || { [[ $name =~ ^/ ]] && continue; [[ $name =~ $base ]] && continue; }
      # A toolkit reached through a link (CI's /usr/local/lib64 is one to
      # /usr/local/cuda-13.0/lib64) counts by where it really lives.
      real=$(readlink -f "$path" 2>/dev/null || echo "$path")
      case "$real" in "$R"/*|"$site"/*|/usr/local/cuda*) continue ;; esac
      case "$path" in
        "$R"/*|"$site"/*|/usr/local/cuda*) ;;
        not) echo "kit: $binary: $name not found" >&2; bad=1 ;;
        *) [[ $name =~ $base ]] || { echo "kit: $binary: $name from $path (not the kit, the wheel or the base system)" >&2; bad=1; } ;;
      esac
    done < <(ldd "$binary")
  done
  [ "$bad" = 0 ] || die "some libraries come from outside the kit"
  say "ldd: every library of dtrain and the tests comes from the kit, the wheel, CUDA or the base system"
}

rehearse() {
  [ "$(id -u)" -eq 0 ] || die "the rehearsal needs root (a private mount namespace hides this machine's packages)"
  local python
  python=$("$ROOT/launch/torch2_venv.sh")
  [ -f "$KIT/manifest.tsv" ] || prepare
  exec unshare -m --propagation private -- "$0" rehearse-inside "$python" "${1:-$ROOT/build-kit}"
}

rehearse_inside() {
  local python=$1 build=$2
  touch "$PREFIX.empty" 2>/dev/null || { mkdir -p "$(dirname "$PREFIX")"; touch "$PREFIX.empty"; }
  local hide=()
  for deb in "$KIT"/debs/*.deb; do
    [[ $BASE_PACKAGES == *" $(dpkg-deb -f "$deb" Package) "* ]] || hide+=("$deb")
  done
  say "hiding this machine's copies of $(echo ${#hide[@]}) packages: $(python3 "$ROOT/tests/gpu/kit_hide.py" "$PREFIX.empty" "${hide[@]}" | wc -l) mounts"
  [ ! -s /usr/include/boost/version.hpp ] && [ ! -x /usr/bin/orterun ] || die "hiding failed"
  unpack
  export CCACHE_BASEDIR=$ROOT
  # The binaries the GPU checks run, not the benchmarks and e2e helpers:
  # CI's time goes to what only this build can show.
  configure_and_build "$python" "$build" 2 dtrain dtrain_unit_tests dtrain_mpi_tests dtrain_nccl_stall dtrain_gpu_step_split
  kit_env
  check_libraries "$python" "$build"
  say "mpirun: $(command -v mpirun) ($(mpirun --version 2>&1 | head -1))"
  grep -q "^MPIEXEC_EXECUTABLE:FILEPATH=$R/" "$build/CMakeCache.txt" || die "ctest would not use the kit's mpirun"
  mpirun --oversubscribe -np 2 "$build/tests/dtrain_mpi_tests" --gtest_filter='Communicator.*' >"$build/kit-np2.log" 2>&1 ||
    { tail -30 "$build/kit-np2.log" >&2; die "mpirun -np 2 of the relocated Open MPI failed"; }
  say "mpirun -np 2 of the relocated Open MPI: $(grep -c '^\[       OK' "$build/kit-np2.log") tests passed"
  # What the relocated kit can break: linking, MPI start-up at 1, 2 and 4
  # ranks, and whole jobs (the memory levers' among them). The rest of the
  # suite ran against Debian's LibTorch.
  # The memory levers' e2e tests too, as the sanitized build runs them
  # (DTRAIN_E2E_SUBSET: the same code, fewer numbers).
  DTRAIN_E2E_SUBSET=1 ctest --test-dir "$build" --output-on-failure \
    -R '^(unit|mpi_np[124]|e2e_train_synthetic|e2e_train_fashion|e2e_train_precision|e2e_sharded|e2e_gpt_checkpointing)$'
  # The gpt_speed check's plumbing on the CPU (a 2-layer model; no speed is
  # judged): dtrain in each precision, the peer under this LibTorch 2.x's
  # torch, and every field of the figures filled.
  local speed=$build/gpt-speed-rehearsal
  rm -rf "$speed"
  python3 "$ROOT/tests/gpu/gpt_speed.py" --cpu --dtrain "$build/dtrain" --config "$ROOT/configs/gpt2_small.ini" \
    --data-file "$KIT/kjv.txt" --out "$speed" --python "$python" >"$speed.log" 2>&1 ||
    { tail -30 "$speed.log" >&2; die "the gpt_speed check failed on the CPU"; }
  python3 - "$speed.log" <<'PY' || die "the gpt_speed check's figures are incomplete"
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("figures: ")][-1]
figures = json.loads(line[len("figures: "):])
for precision in ("bf16-mixed", "tf32", "fp32"):
    run = figures["dtrain"][precision]
    assert run["precision"] == precision and run["tokens_per_sec"] > 0, (precision, run)
    assert run["fused_adamw"] == (precision != "fp32"), ("fused AdamW outside fp32 on LibTorch 2.x", precision, run)
assert figures["peer"]["tokens_per_sec"] > 0 and figures["peer"]["sdpa"] and figures["peer"]["fused_adamw"], figures["peer"]
assert figures["ratio_to_peer"] > 0 and figures["flops_per_token"] > 0, figures
assert set(figures["goals"]) == {"tokens_per_sec_ge_1.05x_peer", "mfu_ge_40pct", "bf16_ge_5x_fp32", "largest_micro_ge_peer"}
# bf16-mixed keeps fewer activation bytes than fp32 at the same micro-batch.
assert figures["dtrain"]["bf16-mixed"]["activations_bytes"] < figures["dtrain"]["fp32"]["activations_bytes"], figures["dtrain"]
print(f"kit: gpt_speed on the CPU: dtrain bf16-mixed {figures['dtrain']['bf16-mixed']['tokens_per_sec']:.0f} tokens/s, "
      f"peer {figures['peer']['tokens_per_sec']:.0f}, fp32 {figures['dtrain']['fp32']['tokens_per_sec']:.0f}")
PY
  say "rehearsal passed"
}

# check NAME TIMEOUT_S COMMAND...: runs one check under a timeout, appends
# its output to the log and a row to $CHECKS (name, pass/fail/skip, seconds,
# detail). A check the time budget leaves no room for, or cuts short, fails:
# it did not show what it names. The detail is the command's last line that
# starts with "figures:" or is a JSON object, else gtest's verdict lines.
check() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  # DTRAIN_KIT_ONLY=a,b: run only those checks (a short device lease).
  if [ -n "${DTRAIN_KIT_ONLY:-}" ] && [[ ",$DTRAIN_KIT_ONLY," != *",$name,"* ]]; then
    printf '%s\tskip\t0\tnot selected (DTRAIN_KIT_ONLY=%s)\n' "$name" "$DTRAIN_KIT_ONLY" >>"$CHECKS"
    return 0
  fi
  if [ "$left" -lt 20 ]; then
    printf '%s\tfail\t0\tnot run: the time budget (DTRAIN_KIT_BUDGET_S) is spent\n' "$name" >>"$CHECKS"
    say "== $name: fail (not run: the time budget is spent)"
    return 0
  fi
  local cut=0  # the budget, not the check's own limit, bounds it
  [ "$limit" -le "$left" ] || { limit=$left; cut=1; }
  say "== $name (at most $limit s)"
  local out=$PREFIX/check.out start=$SECONDS code=0
  local run=("$@")
  if declare -F "$1" >/dev/null; then  # a function of this script: timeout needs a program
    export -f "$1"
    run=(bash -c '"$@"' bash "$@")
  fi
  timeout -k 5 "$limit" "${run[@]}" >"$out" 2>&1 || code=$?
  cat "$out"
  local status=pass detail
  [ "$code" -eq 0 ] || status=fail
  [ "$code" -eq 124 ] && echo "kit: $name ran past $limit s"
  [ "$code" -eq 124 ] && [ "$cut" = 1 ] && echo "kit: $name: cut by the time budget (DTRAIN_KIT_BUDGET_S), not by its own limit"
  if grep -q '^\[  SKIPPED \]' "$out"; then status=fail; echo "kit: $name: a GPU test skipped on the GPU machine"; fi
  if grep -q '^\[==========\] 0 tests' "$out"; then status=fail; echo "kit: $name: the filter selected no test"; fi
  detail=$(grep -E '^(figures:|\{)' "$out" | tail -1 | sed 's/^figures: *//' | tr '\t' ' ' || true)
  [ -n "$detail" ] || detail=$(grep -E '^\[  (PASSED|FAILED)  \]|^kit-check:' "$out" | tr '\n' ' ' | tr '\t' ' ' || true)
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$detail" >>"$CHECKS"
  say "== $name: $status ($((SECONDS - start)) s)"
}

# The watchdog's own line for a collective that timed out after TIMEOUT_S:
# its whole text, so that NCCL's timeout error or the helper's usage line
# (both name --collective-timeout) cannot stand in for it.
watchdog_fired() {  # FILE TIMEOUT_S
  grep -E -q "dtrain: error: rank 0 \(GPU 0\): the [^:]* (at step [0-9]+|during start-up) has not completed after $2 s \(--collective-timeout\): another rank stopped responding or died; aborting the job\$" "$1"
}

# The watchdog must end a collective that never completes: the helper stalls
# the NCCL stream on a value nobody writes, then waits in .item().
stall_check() {
  local build=$1 timeout_s=5 start=$SECONDS code=0
  # Its output goes to the log as it comes (tee), so a hang still shows where.
  set -o pipefail
  timeout -k 5 $((timeout_s + 30)) mpirun -np 1 "$build/tests/dtrain_nccl_stall" --collective-timeout "$timeout_s" 2>&1 |
    while IFS= read -r line; do echo "[$((SECONDS - start)) s] $line"; done | tee "$PREFIX/stall.out" || code=$?
  local took=$((SECONDS - start))
  local left
  # /proc, not pgrep: a bare machine may lack procps. The bracket keeps
  # grep's own command line from matching.
  left=$(grep -ls 'dtrain_nccl_stal[l]' /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 | tr '\n' ' ' || true)
  echo "figures: exit $code after $took s with --collective-timeout $timeout_s; processes left: ${left:-none}"
  [ "$code" -ne 0 ] || { echo "kit-check: the stalled job exited 0"; return 1; }
  watchdog_fired "$PREFIX/stall.out" "$timeout_s" || { echo "kit-check: no watchdog line"; return 1; }
  [ "$took" -le $((timeout_s + 10)) ] || { echo "kit-check: took $took s (timeout $timeout_s + 10 allowed)"; return 1; }
  [ -z "$left" ] || { echo "kit-check: processes left behind: $left"; return 1; }
}

# The default job on one GPU at its global batch of 256 (micro 128 x accum 2),
# on the kit's Fashion-MNIST (prepare stops without it).
default_job_check() {
  local build=$1 out=$PREFIX/default-job
  [ -f "$KIT/fashion-mnist/train-images-idx3-ubyte.gz" ] \
    || { echo "kit-check: the kit has no Fashion-MNIST (run tests/gpu/kit.sh prepare again)"; return 1; }
  rm -rf "$out"
  mpirun -np 1 "$build/dtrain" --config "$ROOT/configs/fashion_mnist_mlp.ini" --device cuda --backend nccl \
    --micro-batch-size 128 --grad-accum-steps 2 --data-dir "$KIT/fashion-mnist" --out-dir "$out" || return 1
  accuracy_floor "$out/summary.json" 0.89
}

# Prints the default job's figures; fails unless its test accuracy is a
# number at or above FLOOR (a NaN or a missing value fails).
accuracy_floor() {  # SUMMARY FLOOR
  python3 - "$1" "$2" <<'PY'
import json, math, sys
summary = json.load(open(sys.argv[1]))
keys = ("test_accuracy", "samples_per_sec", "steady_ms_per_step", "train_seconds", "global_batch_size")
print("figures: " + json.dumps({k: summary.get(k) for k in keys}))
accuracy, floor = summary.get("test_accuracy"), float(sys.argv[2])
if not isinstance(accuracy, (int, float)) or not math.isfinite(accuracy) or not accuracy >= floor:
    print(f"kit-check: test accuracy {accuracy} is not a number >= {floor}")
    sys.exit(1)
PY
}

# The language model on one GPU: configs/kjv_gpt.ini at its global batch of
# 64 (micro 64 x accum 1 on one GPU), on the KJV text the kit carries.
gpt_check() {
  local build=$1 out=$PREFIX/gpt-job
  rm -rf "$out"
  mpirun -np 1 "$build/dtrain" --config "$ROOT/configs/kjv_gpt.ini" --dataset text --data-file "$KIT/kjv.txt" \
    --device cuda --backend nccl --global-batch-size 64 --out-dir "$out" || return 1
  python3 - "$out/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
keys = ("val_bits_per_byte", "val_loss", "tokens_per_sec", "steady_ms_per_step", "train_seconds",
        "peak_device_memory_bytes", "global_batch_size", "micro_batch_size")
print("figures: " + json.dumps({k: summary.get(k) for k in keys}))
bits = summary.get("val_bits_per_byte")
if not isinstance(bits, (int, float)) or not 0 < bits <= 2.1:  # a NaN fails too
    print(f"kit-check: validation {summary.get('val_bits_per_byte')} bits/byte (the CPU reaches 1.80)")
    sys.exit(1)
PY
}

# --micro-batch-size auto and the out-of-memory re-split on a real GPU: a GPT
# of 8 layers, 512 wide, block 256, whose global batch of 512 does not fit a
# 4 GiB budget (the caching allocator's memory fraction).
memory_check() {
  local build=$1 out=$PREFIX/memory
  rm -rf "$out"
  local job=(--config "$ROOT/configs/kjv_gpt.ini" --dataset text --data-file "$KIT/kjv.txt" --device cuda
             --backend nccl --n-layer 8 --n-embd 512 --n-head 8 --block-size 256 --global-batch-size 512
             --memory-budget 4GiB --max-steps 3 --eval-every 0 --validation-size 200 --log-every 1)
  mpirun -np 1 "$build/dtrain" "${job[@]}" --micro-batch-size auto --out-dir "$out/auto" || return 1
  mpirun -np 1 "$build/dtrain" "${job[@]}" --micro-batch-size 512 --out-dir "$out/oom" || return 1
  python3 - "$out" <<'PY'
import json, sys
auto = json.load(open(f"{sys.argv[1]}/auto/summary.json"))
oom = json.load(open(f"{sys.argv[1]}/oom/summary.json"))
budget = 4 << 30
figures = {"auto_tried": [(t["micro_batch_size"], t["peak_bytes"]) for t in auto["micro_batch_auto"]["tried"]],
           "auto_chosen": auto["micro_batch_size"], "auto_peak_bytes": auto["memory"]["peak_bytes"],
           "auto_activations_bytes": auto["memory"]["activations_bytes"],
           "oom_resplits": [(e["step"], e["micro_batch_size"]) for e in oom.get("out_of_memory", [])],
           "oom_final_micro": oom["micro_batch_size"], "oom_peak_bytes": oom["memory"]["peak_bytes"],
           "oom_status": oom["status"]}
print("figures: " + json.dumps(figures))
problems = []
if not 1 <= auto["micro_batch_size"] < 512: problems.append("auto did not narrow the micro-batch under 4 GiB")
if auto["memory"]["peak_bytes"] > budget: problems.append("auto's run peaked past its budget")
if not oom.get("out_of_memory"): problems.append("micro 512 under 4 GiB never ran out of memory")
if oom["status"] != "completed": problems.append("the run that ran out of memory did not complete")
for problem in problems: print("kit-check: " + problem)
sys.exit(1 if problems else 0)
PY
}

write_report() {
  python3 - "$CHECKS" "$1/gpu-report.json" "$2" <<'PY'
import json, subprocess, sys, datetime
checks_path, report_path, build_seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as error:  # a missing tool is a fact to report, not a failure
        return f"unavailable ({error})"
checks = []
for line in open(checks_path):
    name, status, seconds, detail = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
    try:
        detail = json.loads(detail)
    except ValueError:
        pass
    checks.append({"name": name, "status": status, "seconds": int(seconds), "detail": detail})
report = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "gpus": run("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader").splitlines(),
    "torch": run("python3", "-c", "import torch; print(torch.__version__, torch.version.cuda)"),
    "nccl": run("python3", "-c", "import torch; print('.'.join(map(str, torch.cuda.nccl.version())))"),
    "build_seconds": build_seconds,
    "passed": sum(c["status"] == "pass" for c in checks),
    "failed": sum(c["status"] == "fail" for c in checks),
    "skipped": sum(c["status"] == "skip" for c in checks),
    "checks": checks,
}
json.dump(report, open(report_path, "w"), indent=2)
print(f"kit: {report['passed']} passed, {report['failed']} failed, {report['skipped']} skipped: {report_path}")
sys.exit(1 if report["failed"] else 0)
PY
}

# The memory levers on a real GPU (issue 18): a GPT of GPT-2 small's shape
# (12 layers, 768 wide, 12 heads; block 256, byte vocabulary) under one 4 GiB
# budget, with --micro-batch-size auto and activation checkpointing none,
# blocks and auto: the largest micro-batch and tokens/s of each. ZeRO-1
# shards over ranks, and this machine has one GPU: at world 1 it changes
# nothing, so it is not in the table.
levers_check() {
  local build=$1 out=$PREFIX/levers
  rm -rf "$out"
  local job=(--config "$ROOT/configs/kjv_gpt.ini" --dataset text --data-file "$KIT/kjv.txt" --device cuda
             --backend nccl --n-layer 12 --n-embd 768 --n-head 12 --block-size 256 --global-batch-size 256
             --memory-budget 4GiB --max-steps 4 --eval-every 0 --validation-size 200 --log-every 1
             --micro-batch-size auto)
  for way in none blocks auto; do
    mpirun -np 1 "$build/dtrain" "${job[@]}" --activation-checkpointing "$way" --out-dir "$out/$way" || return 1
  done
  python3 - "$out" <<'PY'
import json, sys
runs = {way: json.load(open(f"{sys.argv[1]}/{way}/summary.json")) for way in ("none", "blocks", "auto")}
figures = {way: {"micro": r["micro_batch_size"], "checkpointing": r.get("activation_checkpointing"),
                 "tokens_per_sec": r.get("tokens_per_sec"), "peak_bytes": r["memory"]["peak_bytes"],
                 "activations_bytes": r["memory"]["activations_bytes"]} for way, r in runs.items()}
figures["auto_levers"] = runs["auto"].get("micro_batch_auto", {}).get("levers")
print("figures: " + json.dumps(figures))
problems = []
if runs["blocks"]["micro_batch_size"] < runs["none"]["micro_batch_size"]:
    problems.append("checkpointing fitted a smaller micro-batch than none")
if not runs["blocks"].get("activation_checkpointing"): problems.append("blocks did not checkpoint")
if len(figures["auto_levers"] or []) != 2: problems.append("auto did not weigh both candidates")
for way, r in runs.items():
    if r["memory"]["peak_bytes"] > 4 << 30: problems.append(f"{way} peaked past its 4 GiB budget")
for problem in problems: print("kit-check: " + problem)
sys.exit(1 if problems else 0)
PY
}

# GPU speed (issue 19): dtrain at world 1 on configs/gpt2_small.ini (GPT-2
# small's shape, bytes, bf16-mixed) against a PyTorch eager loop of the same
# model on the same GPU (tests/gpu/peer_gpt.py: bf16 autocast, SDPA, fused
# AdamW), at the same micro-batch; dtrain in tf32 and fp32 too; MFU; the
# largest micro-batch of each under 16 GiB. tests/gpu/gpt_speed.py holds the
# figures and the pass line (0.97x the peer's tokens/s).
gpt_speed_check() {
  local build=$1
  rm -rf "$PREFIX/gpt-speed"
  python3 "$ROOT/tests/gpu/gpt_speed.py" --dtrain "$build/dtrain" --config "$ROOT/configs/gpt2_small.ini" \
    --data-file "$KIT/kjv.txt" --out "$PREFIX/gpt-speed" --python "${DTRAIN_KIT_PYTHON:-python3}" --budget-s 220 \
    --step-split "$build/tests/dtrain_gpu_step_split"
}

# bf16-mixed on configs/kjv_gpt.ini against its fp32 run (gpt_job's, or its
# own when gpt_job did not run): validation bits per byte within 2%, and
# fewer activation bytes at the same micro-batch.
precision_check() {
  local build=$1 out=$PREFIX/precision
  rm -rf "$out"
  local job=(--config "$ROOT/configs/kjv_gpt.ini" --dataset text --data-file "$KIT/kjv.txt" --device cuda
             --backend nccl --global-batch-size 64)
  local fp32=$PREFIX/gpt-job
  # gpt_job's run, when it ran in this kit run (it is fp32, the default).
  if [ ! -f "$fp32/summary.json" ] || ! grep -q '"precision": "fp32"' "$fp32/summary.json" ||
     [ "$fp32/summary.json" -ot "$PREFIX/kit-started" ]; then
    fp32=$out/fp32
    mpirun -np 1 "$build/dtrain" "${job[@]}" --precision fp32 --out-dir "$fp32" || return 1
  fi
  mpirun -np 1 "$build/dtrain" "${job[@]}" --precision bf16-mixed --out-dir "$out/bf16" || return 1
  python3 - "$fp32/summary.json" "$out/bf16/summary.json" <<'PY'
import json, sys
fp32, bf16 = (json.load(open(path)) for path in sys.argv[1:3])
pick = lambda s: {"precision": s.get("precision"), "val_bits_per_byte": s.get("val_bits_per_byte"),
                  "tokens_per_sec": s.get("tokens_per_sec"), "activations_bytes": s["memory"]["activations_bytes"],
                  "micro_batch_size": s.get("micro_batch_size")}
figures = {"fp32": pick(fp32), "bf16-mixed": pick(bf16)}
print("figures: " + json.dumps(figures))
problems = []
a, b = fp32.get("val_bits_per_byte"), bf16.get("val_bits_per_byte")
if not (isinstance(a, float) and isinstance(b, float) and abs(b - a) <= 0.02 * a):
    problems.append(f"bf16-mixed reached {b} bits/byte against fp32's {a} (2% allowed)")
if bf16.get("precision") != "bf16-mixed": problems.append("the bf16 run did not record bf16-mixed")
if fp32.get("micro_batch_size") != bf16.get("micro_batch_size"): problems.append("the micro-batches differ")
if not figures["bf16-mixed"]["activations_bytes"] < figures["fp32"]["activations_bytes"]:
    problems.append("bf16-mixed did not hold fewer activation bytes than fp32")
for problem in problems: print("kit-check: " + problem)
sys.exit(1 if problems else 0)
PY
}

run_kit() {
  local report=${1:?usage: tests/gpu/kit.sh run REPORT_DIR}
  mkdir -p "$report"
  report=$(cd "$report" && pwd)
  exec > >(tee "$report/kit.log") 2>&1
  DEADLINE=$((SECONDS + ${DTRAIN_KIT_BUDGET_S:-570}))
  CHECKS=$PREFIX/checks.tsv
  mkdir -p "$PREFIX"
  : >"$CHECKS"
  touch "$PREFIX/kit-started"  # what this run wrote is newer
  # A kit that dies before its checks (an odd machine) still reports why.
  REPORT=$report
  trap '[ -f "$REPORT/gpu-report.json" ] || { printf "setup\tfail\t0\tunpack, configure or build failed: see kit.log\n" >>"$CHECKS"; write_report "$REPORT" 0 || true; }' EXIT
  command -v nvidia-smi >/dev/null && nvidia-smi -L || say "no nvidia-smi"
  say "$(c++ --version 2>&1 | head -1); $(cmake --version 2>&1 | head -1); ninja $(ninja --version 2>&1 || echo absent); $(nproc) cores"
  local gpus
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  unpack
  local build=$PREFIX/build start=$SECONDS
  configure_and_build "${DTRAIN_KIT_PYTHON:-python3}" "$build" "$(nproc)" dtrain dtrain_mpi_tests dtrain_nccl_stall dtrain_gpu_step_split
  local build_seconds=$((SECONDS - start))
  kit_env
  local tests=$build/tests/dtrain_mpi_tests
  check nccl_world1 60 mpirun -np 1 "$tests" --gtest_filter='Nccl.*'
  check reducer_cuda 90 mpirun -np 1 "$tests" --gtest_filter='ReducerGpu.*'
  check equivalence_gpu 120 mpirun -np 1 "$tests" --gtest_filter='Equivalence.*Gpu*'
  check watchdog_stall 60 stall_check "$build"
  check step_split 60 mpirun -np 1 "$build/tests/dtrain_gpu_step_split"
  check default_job 150 default_job_check "$build"
  if [ "$gpus" -ge 2 ]; then
    check equivalence_multi_gpu 120 mpirun -np "$gpus" "$tests" --gtest_filter='Nccl.*:Equivalence.*'
  else
    printf 'equivalence_multi_gpu\tskip\t0\tneeds 2 or more GPUs (this machine has %s)\n' "$gpus" >>"$CHECKS"
  fi
  if [ -f "$KIT/kjv.txt" ]; then
    check gpt_job 150 gpt_check "$build"
  else
    printf 'gpt_job\tskip\t0\tthe kit has no kjv.txt (prepare found no bible command)\n' >>"$CHECKS"
  fi
  if [ -f "$KIT/kjv.txt" ]; then
    check gpt_speed 240 gpt_speed_check "$build"
    check precision 120 precision_check "$build"
  else
    printf 'gpt_speed\tskip\t0\tthe kit has no kjv.txt (prepare found no bible command)\n' >>"$CHECKS"
    printf 'precision\tskip\t0\tthe kit has no kjv.txt (prepare found no bible command)\n' >>"$CHECKS"
  fi
  if [ -f "$KIT/kjv.txt" ]; then
    check memory_limits 150 memory_check "$build"
  else
    printf 'memory_limits\tskip\t0\tthe kit has no kjv.txt (prepare found no bible command)\n' >>"$CHECKS"
  fi
  if [ -f "$KIT/kjv.txt" ]; then
    check memory_levers 180 levers_check "$build"
  else
    printf 'memory_levers\tskip\t0\tthe kit has no kjv.txt (prepare found no bible command)\n' >>"$CHECKS"
  fi
  write_report "$report" "$build_seconds"
}

case "${1:-}" in
  prepare) prepare ;;
  rehearse) shift; rehearse "$@" ;;
  rehearse-inside) shift; rehearse_inside "$@" ;;
  run) shift; run_kit "$@" ;;
  *) echo "usage: tests/gpu/kit.sh prepare | run REPORT_DIR | rehearse [BUILD_DIR]" >&2; exit 2 ;;
esac
