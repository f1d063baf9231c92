#!/usr/bin/env bash
# GPU evidence in one command: environment, extension build, GPU tests, Triton tests compiled for
# the device, the quick speed sweep, and a summary. Made for a bare GPU machine without network
# (torch, Triton and pytest already installed); sized to finish in under 8 minutes on an H200,
# build included. Every stage has a deadline, so a slow stage costs its own results only.
#
#   bash tools/device_check.sh            on the GPU machine, in the repository root
#   bash tools/device_check.sh --dry-run  anywhere: every stage on CPU at tiny sizes, or skipped
#
# Outputs (at most 8 files) go to $OUT, or bench_out/device/ when OUT is unset:
#   device_check.log  everything printed          summary.txt   one line per stage + test counts
#   tests_gpu.xml     JUnit of `pytest -m gpu`    tests_triton.xml  JUnit of the Triton tests
#   sweep.csv         one row per measurement, written as measured
#   sweep.md          fraction of the HBM floor and speed-up over TorchJD per method, every row
#   sweep.png         achieved GB/s against D
# Environment: PYTHON (default .venv/bin/python, else python3), DEVICE_CHECK_BUDGET (seconds for
# all stages, default 450), FASTMTL_COMMIT (commit to record where the tree has no .git).
# Wheels in .whl/ (tools/device_wheels.sh: TorchJD, quadprog) are installed into a temporary folder
# first, for machines without network.
# Exit status: 0 when every stage that ran passed; 1 when the build, a test or the sweep failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

OUT_DIR="${OUT:-bench_out/device}"
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
rm -f "$OUT_DIR"/{device_check.log,summary.txt,tests_gpu.xml,tests_triton.xml,sweep.csv,sweep.md,sweep.png}
LOG="$OUT_DIR/device_check.log"
SUMMARY="$OUT_DIR/summary.txt"

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

BUDGET="${DEVICE_CHECK_BUDGET:-450}"
RESERVE=25          # kept back for the summary stage
START=$SECONDS
FAILED=0

# Per-stage caps in seconds (each also bounded by what is left of BUDGET).
if [ "$DRY" = 1 ]; then
    CAP_ENV=60 CAP_BUILD=30 CAP_GPU=90 CAP_TRITON=60 PER_TEST=60 PRESET=quick-dry
else
    CAP_ENV=45 CAP_BUILD=180 CAP_GPU=100 CAP_TRITON=80 PER_TEST=60 PRESET=quick
fi

say() { echo "$@"; }
record() { printf '%-12s | %-34s | %4s s | %s\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"; }

# stage NAME CAP NOTE CMD...: run CMD under `timeout` (SIGINT first, so pytest still writes its
# JUnit file; SIGKILL 15 s later), bounded by CAP and the budget left; one line in summary.txt.
stage() {
    local name=$1 cap=$2 note=$3; shift 3
    local left=$((BUDGET - (SECONDS - START) - RESERVE))
    local lim=$((cap < left ? cap : left))
    if [ "$lim" -lt 5 ]; then
        say "===== $name: skipped, the budget of ${BUDGET} s is spent ====="
        record "$name" "skipped: budget spent" 0 "$note"
        return 0
    fi
    say "===== $name (limit ${lim} s, $((SECONDS - START)) s elapsed) ====="
    local t=$SECONDS rc
    timeout -s INT --kill-after=15 "$lim" "$@"
    rc=$?
    local status="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMED OUT after ${lim} s (partial results kept)"
    elif [ "$rc" -ne 0 ]; then status="FAILED (exit $rc)"
    fi
    [ "$rc" -ne 0 ] && FAILED=1
    record "$name" "$status" $((SECONDS - t)) "$note"
    return "$rc"
}

skip() { say "===== $1: skipped: $2 ====="; record "$1" "skipped" 0 "$2"; }

has_module() { "$PY" -c "import $1" >/dev/null 2>&1; }

run_all() {
    say "# fastmtl device check $([ "$DRY" = 1 ] && echo '(dry run, CPU)') on $(hostname), $(date -u '+%Y-%m-%d %H:%M:%S') UTC"
    say "# python: $PY; outputs: $OUT_DIR; budget ${BUDGET} s"
    printf '%-12s | %-34s | %6s | %s\n' stage status time note >"$SUMMARY"

    # 0. carried wheels ---------------------------------------------------------------------------
    if compgen -G ".whl/*.whl" >/dev/null; then
        local site="${TMPDIR:-/tmp}/fastmtl-device-site"
        if [ "$DRY" = 1 ]; then
            skip wheels "dry run: would install $(ls .whl/*.whl | wc -l) carried wheels into $site"
        elif stage wheels 60 "carried wheels into $site" "$PY" -m pip install -q --no-index --no-deps --no-compile \
                --no-cache-dir --upgrade --target "$site" .whl/*.whl; then
            export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        fi
    else
        skip wheels "none carried (tools/device_wheels.sh fetches TorchJD and quadprog into .whl/)"
    fi

    # 1. environment ------------------------------------------------------------------------------
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi || say "nvidia-smi failed (exit $?)"
    else
        say "nvidia-smi: not found"
    fi
    if ! stage env "$CAP_ENV" "versions, device, optional packages" "$PY" tools/device_report.py env; then
        say "!!!!! the Python environment is broken: nothing else can run !!!!!"
        return 1
    fi
    local cuda
    cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
    if [ "$DRY" = 0 ] && [ "$cuda" != 1 ]; then
        say "!!!!! no CUDA device visible to torch: run with --dry-run on machines without a GPU !!!!!"
        record env "FAILED" 0 "no CUDA device visible"
        return 1
    fi

    # 2. extension build for this GPU only --------------------------------------------------------
    local arch cuda_home
    arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)
    cuda_home=$(sh tools/cuda_home.sh)
    local build_cmd=(env "CUDA_HOME=$cuda_home" "TORCH_CUDA_ARCH_LIST=$arch" MAX_JOBS=16 FASTMTL_BUILD_CUDA=1
                     "$PY" setup.py build_ext --inplace)
    if [ "$DRY" = 1 ]; then
        skip build "dry run: would run ${build_cmd[*]}"
        "$PY" -c "from fastmtl import cuda; print('fastmtl._C here:', 'loaded' if cuda.extension_loaded() else cuda.load_error())"
    else
        if ! stage build "$CAP_BUILD" "sm_${arch/./}, MAX_JOBS=16" "${build_cmd[@]}" \
            || ! "$PY" -c "from fastmtl import cuda; assert cuda.extension_loaded(), cuda.load_error(); print('fastmtl._C loaded')"; then
            FAILED=1
            say ""
            say "!!!!!!!!!!!!!!!! BUILD OF fastmtl._C FAILED: the cuda backend's tests and rows are missing !!!!!!!!!!!!!!!!"
            say ""
            record build "FAILED: extension not loadable" 0 "see the log above this line"
        fi
    fi

    # 3. tests ------------------------------------------------------------------------------------
    local timeout_args=(-o "faulthandler_timeout=$PER_TEST")
    if has_module pytest_timeout; then
        timeout_args=(--timeout="$PER_TEST")
    else
        say "pytest-timeout missing: a hung test prints its traceback after ${PER_TEST} s and the stage deadline stops it"
    fi
    local pytest_args=(-m pytest -p no:cacheprovider -rfEs -v --continue-on-collection-errors "${timeout_args[@]}")
    # Without CUDA every selected test skips: the stage still proves that the selection collects.
    stage gpu-tests "$CAP_GPU" "pytest -m gpu" "$PY" "${pytest_args[@]}" -m gpu \
        --junitxml="$OUT_DIR/tests_gpu.xml" tests
    if [ "$cuda" = 1 ]; then
        stage triton-tests "$CAP_TRITON" "Triton kernels compiled for the device" "$PY" "${pytest_args[@]}" \
            --junitxml="$OUT_DIR/tests_triton.xml" tests/test_triton_gramian.py tests/test_triton_weighted_sum.py \
            tests/test_triton_graddrop.py tests/test_triton_batched_dot.py
    else
        skip triton-tests "no CUDA device (the CPU suite runs these kernels under the interpreter)"
    fi

    # 4. speed sweep: it stops itself 20 s before its limit and writes sweep.md / sweep.png --------
    local left=$((BUDGET - (SECONDS - START) - RESERVE))
    stage sweep "$left" "preset $PRESET" "$PY" -m fastmtl.bench speed --preset "$PRESET" \
        --out "$OUT_DIR/sweep.csv" --deadline $((left > 40 ? left - 20 : left / 2))
    if grep -q "^  deadline" "$LOG" 2>/dev/null; then
        record sweep "CUT at its deadline" 0 "$(grep -m1 '^  deadline' "$LOG" | sed 's/^ *//')"
    fi
    has_module matplotlib || say "matplotlib missing: no sweep.png"
    has_module torchjd || say "torchjd missing: no TorchJD columns (speed-up over TorchJD not measured)"

    # 5. summary (also rebuilds sweep.md / sweep.png from a cut-short CSV) -------------------------
    "$PY" tools/device_report.py finish "$OUT_DIR" || FAILED=1
    say "# device check done in $((SECONDS - START)) s; $([ "$FAILED" = 0 ] && echo 'every stage that ran passed' || echo 'SOMETHING FAILED: see summary.txt')"
    return "$FAILED"
}

run_all 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
