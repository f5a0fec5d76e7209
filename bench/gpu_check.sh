#!/usr/bin/env bash
# Every GPU measurement issue 14 (section 4) asks for, in ONE command that fits a ~9-minute slot on
# one NVIDIA H200 with no internet, recording everything into $OUT (default bench/gpu_out/):
#   1. env        nvidia-smi, Python/torch/CUDA versions; installs the wheels of .gpu/whl into
#                 /tmp/site (snakemake, pulp and what the image lacks); extracts .gpu/cifar10-jpeg.tar.gz
#                 into data/cifar10-jpeg (config root) when missing                         -> env.txt
#   2. qat-eager  bench/qat_step.py --modes eager (ResNet-18 224px b256, ResNet-20 32px b512, bf16)
#   5. qat-compile-resnet20, 7. qat-compile-resnet18: the same under torch.compile          -> qat_step.txt
#                 goal: LSQ W4A4 step <= 1.3x FP32 in the same mode (a PASS/FAIL line per row)
#   3. loaders    bench/loaders.py on data/cifar10-jpeg: torch vs gpu (dali only if it imports: its
#                 405 MiB wheel cannot travel)                                             -> loaders.txt
#   4. ddp        stages/pretrain.py under torchrun (nproc 1, digits, ResNet-8, 1 epoch, cuda), its
#                 checkpoint checked; and a world-size-1 NCCL all_reduce (nproc 1 never joins a
#                 process group: mpq.distributed.init is a no-op for WORLD_SIZE 1)           -> ddp.txt
#   6. fidelity   the workflow on config/fidelity-cifar10-cuda.yaml; summary.csv, the per-job wall
#                 times and the logs/metrics come back    -> fidelity_summary.csv, fidelity_times.tsv,
#                                                            fidelity_results.tar.gz
# All output also goes to gpu_check.log, with each step's start, end, exit code and a final table
# (at most 8 files in $OUT). Every step has its own timeout, cut to what is left of the slot
# (GPU_CHECK_BUDGET seconds, default 520), so a failing or slow step never stops the others;
# a step with too little time left is skipped and says so. The order puts the cheap steps first
# and the most expensive compile last.
#
# Prepare (here, on the CPU machine with the registry):   bash bench/gpu_prepare.sh
# Run on the device, from the repository root, with .gpu carried (it is git-ignored):
#   bash bench/gpu_check.sh                   # e.g. run(command="bash bench/gpu_check.sh", carry=[".gpu"])
# Quick functional test on a CPU (2-3 min: the smallest forms, a dry run of the workflow):
#   GPU_CHECK_CPU=1 OUT=/tmp/gpu_out bash bench/gpu_check.sh
# Knobs: OUT, GPU_CHECK_BUDGET (s), GPU_CHECK_GPU_SLOTS (the workflow's --resources gpu=N, default
# 4: GPU jobs sharing the H200 at a time; 1 runs them one after another), GPU_CHECK_PYTHON,
# GPU_CHECK_STEPS (comma list of the step names below to run; env always runs), e.g. a second slot:
#   GPU_CHECK_STEPS=fidelity,qat-compile-resnet18 bash bench/gpu_check.sh
# (the workflow continues where it stopped when the machine still holds results/).
# The numbers go into bench/RESULTS.md (qat_step, loaders, fidelity tables) with this command, the
# commit and the date. MPQ_* variables are left at their defaults.
set -u
export PYTHONUNBUFFERED=1

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
CPU=${GPU_CHECK_CPU:-0}
OUT=${OUT:-$REPO/bench/gpu_out}
BUDGET=${GPU_CHECK_BUDGET:-520}
SLOTS=${GPU_CHECK_GPU_SLOTS:-4}
CONFIG=config/fidelity-cifar10-cuda.yaml
EXPERIMENT=fidelity-cifar10-resnet20-cuda
DATA_ROOT=data/cifar10-jpeg
SITE=/tmp/site
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY=$GPU_CHECK_PYTHON
elif [ "$CPU" = 1 ] && [ -x "$REPO/.venv/bin/python" ]; then
    PY=$REPO/.venv/bin/python          # the CPU machine: the project's venv (Python 3.11)
else
    PY=python3                         # the H200 image: Python 3.12 with torch
fi
if [ "$CPU" = 1 ]; then
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$REPO
    DEVICE=cpu
else               # the wheels of .gpu/whl go to $SITE (step env); the stages import mpq from $REPO
    export PYTHONPATH=$SITE:$REPO PATH=$SITE/bin:$PATH
    DEVICE=cuda
fi
SELF=$REPO/bench/gpu_check.sh
STEPS=()
say() { echo "[gpu_check $(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }

# step NAME CAP_S MIN_S FILE CMD...: run CMD with a timeout of min(CAP_S, time left), its output
# appended to $OUT/FILE (and the log); skipped when less than MIN_S seconds are left.
step() {
    local name=$1 cap=$2 min=$3 file=$4; shift 4
    if [ -n "${GPU_CHECK_STEPS:-}" ] && [ "$name" != env ] && [[ ",$GPU_CHECK_STEPS," != *",$name,"* ]]; then
        say "=== $name: not in GPU_CHECK_STEPS, not run"
        STEPS+=("$name not-selected - -")
        return 0
    fi
    local left=$((DEADLINE - $(date +%s))) limit start rc target=$OUT/$file
    limit=$(( cap < left ? cap : left ))
    [ "$file" = - ] && target=/dev/null
    # a function of this script runs in a fresh bash (timeout runs programs only)
    declare -F "$1" >/dev/null && set -- bash "$SELF" --sub "$@"
    if [ "$limit" -lt "$min" ]; then
        say "=== $name: SKIPPED, ${left}s of the budget left (needs ${min}s)" | tee -a "$target"
        STEPS+=("$name skipped - -")
        return 0
    fi
    start=$(date +%s)
    say "=== $name: start (timeout ${limit}s) $(date -u +%FT%TZ)" | tee -a "$target"
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$target"
    rc=${PIPESTATUS[0]}
    local took=$(( $(date +%s) - start ))
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && rc="$rc(timeout)"
    say "=== $name: end rc=$rc after ${took}s $(date -u +%FT%TZ)" | tee -a "$target"
    STEPS+=("$name $rc ${took}s ${limit}s")
}

# --- 1. environment ---------------------------------------------------------------------------
env_step() {
    echo "host $(hostname)  cores $(nproc --all)  mode $([ "$CPU" = 1 ] && echo cpu-test || echo gpu)  repo $REPO"
    free -g 2>/dev/null | head -2; df -h /tmp . 2>/dev/null
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit,mig.mode.current \
            --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    echo "python: $(command -v "$PY") $("$PY" -V 2>&1)"
    "$PY" - <<'EOF'
import torch, torchvision
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
      f"torchvision {torchvision.__version__}, threads {torch.get_num_threads()}")
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
          f"capability {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
try:
    import nvidia.dali  # noqa: F401
    print("nvidia-dali: importable")
except Exception:
    print("nvidia-dali: not importable (its 405 MiB wheel cannot travel; the dali rows are skipped)")
EOF
    local wheels=(.gpu/whl/*.whl)
    if [ ! -e "${wheels[0]}" ]; then
        echo "no wheels in .gpu/whl: run bash bench/gpu_prepare.sh here and carry .gpu"
    elif "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
        echo "installing ${#wheels[@]} wheels into $SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "${wheels[@]}" || echo "pip install failed (rc $?)"
    else
        echo "wheels are for Python 3.12, this is $("$PY" -V 2>&1): not installed, using this environment"
    fi
    "$PY" - <<'EOF'
from importlib import metadata
for name, dist in (("snakemake", "snakemake"), ("pulp", "pulp"), ("jsonschema", "jsonschema"), ("yaml", "pyyaml"),
                   ("pandas", "pandas"), ("matplotlib", "matplotlib"), ("sklearn", "scikit-learn"),
                   ("pydantic", "pydantic"), ("sqlmodel", "sqlmodel")):
    try:
        mod = __import__(name)
        print(f"{name} {metadata.version(dist)} from {mod.__file__}")
    except Exception as e:  # noqa: BLE001
        print(f"{name}: import FAILED ({type(e).__name__}: {e})")
try:
    import pulp
    print("pulp CBC available:", pulp.PULP_CBC_CMD(msg=False).available())
except Exception as e:  # noqa: BLE001
    print(f"pulp CBC: {type(e).__name__}: {e}")
EOF
    if [ -d "$DATA_ROOT/train" ] && [ -d "$DATA_ROOT/test" ]; then
        echo "$DATA_ROOT present: $(find "$DATA_ROOT/train" -name '*.jpg' | wc -l) train JPEGs"
    elif [ -f .gpu/cifar10-jpeg.tar.gz ]; then
        mkdir -p "$DATA_ROOT" && tar -xzf .gpu/cifar10-jpeg.tar.gz -C "$DATA_ROOT" \
            && echo "extracted .gpu/cifar10-jpeg.tar.gz into $DATA_ROOT"
    else
        echo "no $DATA_ROOT and no .gpu/cifar10-jpeg.tar.gz: the loaders and fidelity steps will fail"
    fi
    [ -f .gpu/resnet20-cifar10-published.th ] || echo "missing .gpu/resnet20-cifar10-published.th ($CONFIG needs it)"
}

# --- 2/5/7. QAT step time ------------------------------------------------------------------------
qat_goal() {   # one PASS/FAIL line per table row: LSQ W4A4 (lsq-fused, lsq-codes) <= 1.3x fp32
    "$PY" - "$OUT/qat_step.txt" <<'EOF'
import re, sys
rows = [l for l in open(sys.argv[1]) if re.match(r"^resnet\d+\s", l) and "fp32" in l]
for row in rows:
    ratios = dict(re.findall(r"(lsq-fused|lsq-codes) [\d.]+ms x([\d.]+)", row))
    cells = ", ".join(f"{k} x{v} {'PASS' if float(v) <= 1.3 else 'FAIL'}" for k, v in ratios.items())
    mode = re.search(r"\s(eager|compile)\s", row)
    print(f"goal <= 1.3x fp32: {row.split()[0]} {mode.group(1) if mode else '?'}: {cells}")
print(f"goal: {len(rows)} rows measured")
EOF
}

# --- 3. loaders ---------------------------------------------------------------------------------------
loaders_step() {
    "$PY" -c 'import nvidia.dali' 2>/dev/null \
        || echo "nvidia-dali: not importable here (its 405 MiB wheel cannot travel): no dali row"
    "$PY" bench/loaders.py --root "$DATA_ROOT" "$@"
}

# --- 4. DDP smoke test ----------------------------------------------------------------------------
ddp_step() {
    local dir=/tmp/gpu_check_ddp spec
    rm -rf "$dir"; mkdir -p "$dir"
    spec="{\"seed\": 0, \"device\": \"$DEVICE\", \"dataset\": {\"name\": \"digits\", \"image_size\": 16, \"batch_size\": 128},
           \"model\": {\"arch\": \"resnet8\", \"num_classes\": 10}, \"pretrain\": {\"epochs\": 1, \"lr\": 0.1}}"
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 stages/pretrain.py --spec "$spec" \
        --threads 1 --model-out "$dir/model.pt" --metrics-out "$dir/metrics.json"
    local rc=$?
    echo "torchrun pretrain rc=$rc; outputs: $(ls "$dir" | tr '\n' ' ')"
    "$PY" - "$dir" <<'EOF' || rc=1
import json, sys, torch
d = sys.argv[1]
ckpt = torch.load(f"{d}/model.pt", map_location="cpu", weights_only=True)
assert ckpt["kind"] == "fp32" and not any(k.startswith("module.") for k in ckpt["state_dict"]), ckpt.keys()
print("checkpoint ok:", ckpt["arch"], len(ckpt["state_dict"]), "tensors; metrics", json.load(open(f"{d}/metrics.json")))
EOF
    # The process group itself: NCCL on CUDA, gloo on the CPU, world size 1.
    "$PY" - "$DEVICE" <<'EOF' || rc=1
import os, sys, time, torch, torch.distributed as dist
cuda = sys.argv[1] == "cuda"
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561", RANK="0", WORLD_SIZE="1")
t0 = time.perf_counter()
dist.init_process_group("nccl" if cuda else "gloo")
dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
x = torch.ones(1 << 20, device=dev)
dist.all_reduce(x); dist.barrier()
ok = float(x[0]) == 1.0
print(f"{dist.get_backend()} world 1: all_reduce {'ok' if ok else 'WRONG'} in {time.perf_counter() - t0:.2f}s"
      + (f" (NCCL {'.'.join(map(str, torch.cuda.nccl.version()))})" if cuda else ""))
dist.destroy_process_group()
sys.exit(0 if ok else 1)
EOF
    return $rc
}

# --- 6. fidelity workflow -------------------------------------------------------------------------
SNAKE_ARGS=(--cores 16 --resources "gpu=$SLOTS" --keep-going --rerun-incomplete --printshellcmds
            --show-failed-logs --replace-workflow-config)
fidelity_step() {
    if [ "$CPU" = 1 ]; then   # a dry run in an empty directory: the plan, without data or results
        local dir
        dir=$(mktemp -d /tmp/gpu_check_dry.XXXX)
        MPQ_SKIP_MACHINE_CHECKS=1 "$PY" -m snakemake -s "$REPO/Snakefile" --directory "$dir" -n "${SNAKE_ARGS[@]}" \
            --configfile "$REPO/$CONFIG" > "$dir.txt" 2>&1
        local rc=$?
        grep -c '"device":"cuda"' "$dir.txt" | sed 's/^/jobs with "device":"cuda": /'
        grep -c '"loader":"gpu"' "$dir.txt" | sed 's/^/jobs with "loader":"gpu": /'
        grep -q 'torch.distributed.run' "$dir.txt" && echo "WARNING: a job would run under torchrun"
        awk '/^Job stats:/ {on = 1} on {print} on && /^total/ {exit}' "$dir.txt"
        [ "$rc" = 0 ] || tail -30 "$dir.txt"
        rm -rf "$dir" "$dir.txt"
        return "$rc"
    fi
    if ls .snakemake/locks/* >/dev/null 2>&1; then
        "$PY" -m snakemake --unlock "${SNAKE_ARGS[@]}" --configfile "$CONFIG" >/dev/null 2>&1
    fi
    "$PY" -m snakemake "${SNAKE_ARGS[@]}" --configfile "$CONFIG"
}

collect_fidelity() {
    local res=results/$EXPERIMENT
    [ -f "$res/summary.csv" ] && cp "$res/summary.csv" "$OUT/fidelity_summary.csv"
    [ -d "$res" ] || return 0
    "$PY" - "$res" "$OUT/fidelity_times.tsv" <<'EOF'
import csv, glob, json, os, sys
res, out = sys.argv[1], sys.argv[2]
rows = []
for path in sorted(glob.glob(f"{res}/benchmarks/**/*.tsv", recursive=True)):
    with open(path) as f:
        rec = next(csv.DictReader(f, delimiter="\t"), None)
    job = os.path.relpath(path, f"{res}/benchmarks")[:-4]
    rows.append((job, rec.get("s", "") if rec else "", rec.get("max_rss", "") if rec else ""))
with open(out, "w") as f:
    f.write("job\twall_s\tmax_rss_mb\n")
    for r in rows:
        f.write("\t".join(r) + "\n")
done = sorted(os.path.relpath(p, res) for p in glob.glob(f"{res}/policies/*/metrics.json"))
print(f"fidelity: {len(rows)} job wall times, {len(done)} policies evaluated, summary "
      f"{'made' if os.path.exists(f'{res}/summary.csv') else 'NOT made'}")
for p in done:
    m = json.load(open(f"{res}/{p}"))
    print(f"  {p.split('/')[1]:<18} top1 {m.get('top1', m.get('accuracy', '?'))}")
EOF
    # Logs, metrics, policies and timings (no model files), and Snakemake's own log.
    tar -czf "$OUT/fidelity_results.tar.gz" --exclude='*.pt' --exclude='*.pkl' --exclude='*.png' \
        "$res" $(ls -t .snakemake/log/*.log 2>/dev/null | head -1) 2>/dev/null
    ls -la "$OUT/fidelity_results.tar.gz"
}

# --- the run ----------------------------------------------------------------------------------------
if [ "${1:-}" = --sub ]; then   # one step's function, called by step() under its timeout
    shift
    "$@"
    exit $?
fi
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
for f in gpu_check.log env.txt qat_step.txt loaders.txt ddp.txt; do : > "$OUT/$f"; done
rm -f "$OUT/fidelity_summary.csv" "$OUT/fidelity_times.tsv" "$OUT/fidelity_results.tar.gz"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

say "gpu_check: mode $([ "$CPU" = 1 ] && echo 'CPU test' || echo GPU), budget ${BUDGET}s, OUT=$OUT"
step env 120 10 env.txt env_step

if [ "$CPU" = 1 ]; then
    step qat-eager 90 20 qat_step.txt "$PY" bench/qat_step.py --device cpu --quick --models resnet20 \
        --modes eager --rounds 1 --steps 1 --warmup 1 --threads 1
    step loaders 60 15 loaders.txt loaders_step --images 512 --batch 128 --workers 0 --device cpu
    step ddp 90 20 ddp.txt ddp_step
    say "qat compile: skipped in the CPU test (inductor's C++ compile takes minutes on 2 cores)" \
        | tee -a "$OUT/qat_step.txt"
    step fidelity-dry-run 120 20 - fidelity_step
else
    step qat-eager 75 30 qat_step.txt "$PY" bench/qat_step.py --modes eager
    step loaders 60 20 loaders.txt loaders_step --images 0 --batch 256 --workers 8
    step ddp 60 20 ddp.txt ddp_step
    step qat-compile-resnet20 90 45 qat_step.txt "$PY" bench/qat_step.py --models resnet20 --modes compile
    step fidelity 300 60 - fidelity_step
    step qat-compile-resnet18 150 60 qat_step.txt "$PY" bench/qat_step.py --models resnet18 --modes compile
fi
qat_goal 2>&1 | tee -a "$OUT/qat_step.txt"
collect_fidelity

say "=== steps (name rc took timeout):"
printf '  %s\n' "${STEPS[@]}"
ls -la "$OUT"
say "gpu_check: done in $(( $(date +%s) - T0 ))s; put the numbers into bench/RESULTS.md with the command"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null   # the log complete before $OUT is collected
exit 0
