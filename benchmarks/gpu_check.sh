#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one short call (about 5 minutes on one H100; each step is capped).
#
#   bash benchmarks/gpu_check.sh              # on a CUDA machine; without CUDA the GPU steps say "skipped"
#   bash benchmarks/gpu_check.sh --dry-run    # prints what each step would run, runs nothing
#   bash benchmarks/gpu_check.sh --fetch-wheels   # HERE, before: the engine's missing packages into .whl/
#
# Steps: the machine (nvidia-smi, torch/CUDA versions); the engine's imports (wheels from .whl/ if present);
# the `cuda`-marked tests; a bf16 on-policy run of the toy task through `distill run`; bench_vs_trl.py on
# CUDA in bf16 (ours against TRL's GKDTrainer); bench_long_sequences.py on CUDA; bench_vllm_rollouts.py if
# vllm imports; with 2+ GPUs, one FSDP step at 1 and at N GPUs through `distill run`.
# Output: $OUT if set (the device tool brings that folder back), else ./gpu_check_out: gpu_check.log (every
# step's output), summary.tsv (step, status, seconds), the runs' metrics. A failing step does not stop the
# rest; the exit code is the number of failed steps (0: every step passed or was skipped for a stated reason).
# The whole script keeps within GPU_CHECK_BUDGET_S (default 540 s: under the device tool's 600 s per command).
set -u
cd "$(dirname "$0")/.."

DRY=0 FETCH=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --fetch-wheels) FETCH=1 ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (use --dry-run)" >&2; exit 2 ;;
    esac
done

# The lent GPU machines have torch, transformers, accelerate, peft, typer and pyyaml but no network and, as
# their package list reads, no pydantic (the spec), datasets or trl: fetch those here as Python 3.12 wheels,
# the versions of this environment; .whl/ travels with the working tree and step 2 installs it there.
if [ "$FETCH" = 1 ]; then
    PY_HERE="${PYTHON:-.venv/bin/python}"
    mkdir -p .whl
    for name in pydantic pydantic_core annotated_types typing_inspection datasets dill multiprocess trl; do
        version=$("$PY_HERE" -c "import importlib.metadata as m; print(m.version('$name'))") || exit 1
        "$PY_HERE" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$name==$version" || exit 1
    done
    ls -la .whl
    exit 0
fi

OUT_DIR="${OUT:-./gpu_check_out}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu_check.log"
SUMMARY="$OUT_DIR/summary.tsv"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"  # run folders: big, not brought back
: >"$LOG"
printf 'step\tstatus\tseconds\n' >"$SUMMARY"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}:$WORK/site"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY="${PYTHON:-python3}"; fi
export PY WORK OUT_DIR
FAILED=0
# the whole script's wall-clock budget: the device tool stops a command at 600 s, so each step's limit is
# cut to what is left, and a step with under 30 s left is skipped (and counted as failed)
BUDGET_S="${GPU_CHECK_BUDGET_S:-540}"

log() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT_S COMMAND...: runs COMMAND under min(LIMIT_S, budget left), logs its output and wall time
step() {
    local name="$1" limit="$2"
    shift 2
    log ""
    log "=== $name: $*"
    if [ "$DRY" = 1 ]; then
        if declare -F "$1" >/dev/null; then declare -f "$1" | tee -a "$LOG"; fi
        log "(dry run: not run)"
        printf '%s\tdry-run\t0\n' "$name" >>"$SUMMARY"
        return 0
    fi
    local left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt 30 ]; then
        log "=== $name: skipped: out of the ${BUDGET_S} s budget"
        printf '%s\tskipped: out of time budget\t0\n' "$name" >>"$SUMMARY"
        FAILED=$((FAILED + 1))
        return 0
    fi
    [ "$limit" -le "$left" ] || limit=$left
    local start=$SECONDS rc
    # through bash -c so that the exported step functions run under timeout like any command
    timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start)) status=passed
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        status="failed (over its ${limit} s limit)"
    elif [ "$rc" != 0 ]; then
        status="failed (exit $rc)"
    fi
    [ "$status" = passed ] || FAILED=$((FAILED + 1))
    log "=== $name: $status in ${took} s"
    printf '%s\t%s\t%s\n' "$name" "$status" "$took" >>"$SUMMARY"
}

skip() {
    log ""
    log "=== $1: skipped: $2"
    printf '%s\tskipped: %s\t0\n' "$1" "$2" >>"$SUMMARY"
}

py_ok() { "$PY" -c "$1" >/dev/null 2>&1; }
export -f py_ok

# --- 1. the machine ---------------------------------------------------------------------------------
env_report() {
    if command -v nvidia-smi >/dev/null; then nvidia-smi; nvidia-smi -L; else echo "nvidia-smi: not found"; fi
    "$PY" - <<'EOF'
import platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__}, CUDA build {torch.version.cuda}")
print(f"cuda available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
for name in ("transformers", "accelerate", "trl", "vllm"):
    try:
        print(f"{name} {__import__(name).__version__}")
    except Exception as exc:
        print(f"{name}: not importable ({type(exc).__name__})")
EOF
}
export -f env_report
step env 60 env_report

CUDA=0
py_ok "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && CUDA=1
GPUS=0
if [ "$CUDA" = 1 ]; then GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())"); fi
if [ "$DRY" = 1 ]; then CUDA=1 GPUS=2; fi  # a dry run shows every step as on a 2-GPU machine
log "CUDA: $CUDA, GPUs: $GPUS"

# --- 2. the engine's imports --------------------------------------------------------------------------
# A bare GPU machine can have torch and transformers but not everything the engine imports, and no
# network: wheels fetched beforehand into .whl/ (docs/benchmarks.md, "GPU check") are installed here.
engine_imports() {
    if ! py_ok "import core_distill.train, core_distill.cli"; then
        if ls .whl/*.whl >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .whl/*.whl || return 1
        fi
    fi
    "$PY" -c "import core_distill.train, core_distill.cli; print('engine imports: ok')"
}
export -f engine_imports
step engine_imports 90 engine_imports

# --- 3. tests that need CUDA -----------------------------------------------------------------------------
cuda_tests() {
    # only the files that hold `cuda`-marked tests: the others may import the service's packages
    local files
    files=$(grep -rl "pytest.mark.cuda" tests --include="test_*.py" | sort)
    echo "files: $files"
    # shellcheck disable=SC2086
    "$PY" -m pytest -m cuda -q -p no:cacheprovider $files
}
export -f cuda_tests
if [ "$CUDA" = 1 ]; then step cuda_tests 120 cuda_tests; else skip cuda_tests "no CUDA device"; fi

# --- 4. a bf16 on-policy run of the toy task -----------------------------------------------------------
onpolicy_bf16() {
    "$PY" -m core_distill.cli run examples/gkd_on_policy.yaml --output "$WORK/onpolicy_bf16" --no-resume \
        --set dtype=bfloat16 --set max_steps=10 --set eval_every=5 --set eval_examples=32 --set save_every=0 || return 1
    cp "$WORK/onpolicy_bf16/metrics.jsonl" "$OUT_DIR/onpolicy_bf16_metrics.jsonl"
}
export -f onpolicy_bf16
if [ "$CUDA" = 1 ]; then step onpolicy_bf16 120 onpolicy_bf16; else skip onpolicy_bf16 "no CUDA device"; fi

# --- 5. ours against TRL's GKDTrainer, bf16 on CUDA ----------------------------------------------------
vs_trl() {
    local frameworks=trl,ours
    if ! py_ok "import trl.experimental.gkd"; then
        echo "trl is not installed: pip install trl"
        if ! "$PY" -m pip install -q "trl==1.16.0"; then
            echo "could not install trl (no network?): measuring ours only"
            frameworks=ours
        fi
    fi
    "$PY" benchmarks/bench_vs_trl.py --device cuda --dtype bfloat16 --frameworks "$frameworks" \
        --assets "$WORK/vs_trl_assets"
}
export -f vs_trl
if [ "$CUDA" = 1 ]; then step bench_vs_trl 240 vs_trl; else skip bench_vs_trl "no CUDA device"; fi

# --- 6. peak memory against completion length -----------------------------------------------------------
long_sequences() {
    "$PY" benchmarks/bench_long_sequences.py --device cuda --dtype bfloat16 --assets "$WORK/long_seq_assets"
}
export -f long_sequences
if [ "$CUDA" = 1 ]; then step bench_long_sequences 150 long_sequences; else skip bench_long_sequences "no CUDA device"; fi

# --- 7. vLLM rollouts against HF generate ----------------------------------------------------------------
if [ "$CUDA" = 0 ]; then
    skip bench_vllm_rollouts "no CUDA device"
elif [ "$DRY" = 1 ] || py_ok "import vllm"; then
    step bench_vllm_rollouts 240 "$PY" benchmarks/bench_vllm_rollouts.py --steps 3
else
    skip bench_vllm_rollouts "vllm not installed"
fi

# --- 8. one FSDP step: 1 GPU against N -------------------------------------------------------------------
fsdp_steps() {
    local n="$1" spec=examples/gkd_on_policy.yaml
    local batch=$((16 % n == 0 ? 16 : 4 * n))  # the global micro-batch must split evenly over the processes
    local common=(--no-resume --set dtype=bfloat16 --set max_steps=3 --set eval_every=0 --set save_every=0
        --set batch_size="$batch")
    "$PY" -m core_distill.cli run "$spec" --output "$WORK/fsdp_1" "${common[@]}" || return 1
    "$PY" -m core_distill.cli run "$spec" --output "$WORK/fsdp_$n" "${common[@]}" \
        --set gpus="$n" --set sharding=fsdp || return 1
    cp "$WORK/fsdp_1/metrics.jsonl" "$OUT_DIR/fsdp_1gpu_metrics.jsonl"
    cp "$WORK/fsdp_$n/metrics.jsonl" "$OUT_DIR/fsdp_${n}gpu_metrics.jsonl"
    "$PY" - "$WORK/fsdp_1/metrics.jsonl" "$WORK/fsdp_$n/metrics.jsonl" <<'EOF'
import json, sys
for path in sys.argv[1:]:
    rows = [json.loads(line)["metrics"] for line in open(path)]
    last = rows[-1]
    shown = {k: round(v, 4) for k, v in last.items() if k.startswith(("perf/", "loss", "memory"))}
    print(path, shown)
EOF
}
export -f fsdp_steps
HAS_FSDP_FIELDS=0
py_ok "from core_distill.spec import DistillSpec; f = DistillSpec.model_fields; assert 'gpus' in f and 'sharding' in f" \
    && HAS_FSDP_FIELDS=1
if [ "$GPUS" -lt 2 ]; then
    skip fsdp_1_vs_n "fewer than 2 GPUs ($GPUS)"
elif [ "$HAS_FSDP_FIELDS" = 0 ] && [ "$DRY" = 0 ]; then
    skip fsdp_1_vs_n "this DistillSpec has no gpus/sharding fields"
else
    step fsdp_1_vs_n 240 fsdp_steps "$GPUS"
fi

# --- summary ----------------------------------------------------------------------------------------------
log ""
log "=== summary ($SUMMARY)"
column -t -s $'\t' "$SUMMARY" 2>/dev/null | tee -a "$LOG" || cat "$SUMMARY" | tee -a "$LOG"
[ "$CUDA" = 1 ] && [ "$DRY" = 0 ] || log "no CUDA device or a dry run: nothing was measured"
log "failed steps: $FAILED"
rm -rf "$WORK"
exit "$FAILED"
