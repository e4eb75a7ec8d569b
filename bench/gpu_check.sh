#!/bin/bash
# The GPU checks in one call (issue 5): bench/benchmark.py at full size with train.compile, then
# the demo's stages run directly (no dvc) on the GPU in a scratch copy of the code.
#
#   bash bench/gpu_check.sh         # on one H100/H200, from a checkout (no make repro needed)
#
# Writes into $OUT (default: a new temporary folder, printed at the end):
#   result.json   the benchmark's JSON (copy it to bench/result.json); if the benchmark runs past
#                 its limit ($BENCH_LIMIT s, default 400) it holds the sections measured so far
#   bench.log     the benchmark's progress log
#   stages.log    the demo on the GPU: embed_text on the GPU against the same reports embedded on
#                 the CPU, train fusion twice with train.deterministic=false and twice with true
#                 (do the weights' sha256 agree?), evaluate, predict; a CHECK line per step
# Exits 1 if a step failed. Nothing in the checkout changes. Needs torch, timm, transformers,
# h5py, pandas, scikit-learn, pyyaml, pillow and tqdm; dvc and dvclive need not be installed.
#
# A dry run of the script itself on a CPU (tiny benchmark; the stages on the CPU):
#   BENCH_ARGS="--tiny --device cpu" REQUIRE_CUDA=0 PYTHON=.venv/bin/python bash bench/gpu_check.sh
set -u -o pipefail
PYTHON=${PYTHON:-python3}
BENCH_ARGS=${BENCH_ARGS:---compile --compile-limit 200}
BENCH_LIMIT=${BENCH_LIMIT:-400}
REQUIRE_CUDA=${REQUIRE_CUDA:-1}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
case $PYTHON in  # an absolute path (not resolving links: a venv's python is one): part 2 runs elsewhere
  /*) ;;
  */*) PYTHON="$PWD/$PYTHON" ;;
  *) PYTHON=$(command -v "$PYTHON") || { echo "gpu_check: no $PYTHON on the PATH" >&2; exit 2; } ;;
esac
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1
if [ "$REQUIRE_CUDA" = 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU is visible'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 2
fi
failed=0

# 1. The benchmark first: it is what the performance targets are judged on.
timeout "$BENCH_LIMIT" "$PYTHON" bench/benchmark.py $BENCH_ARGS > "$OUT/result.json" 2> "$OUT/bench.log"
status=$?
echo "CHECK benchmark: exit status $status"
[ $status = 0 ] || failed=$((failed + 1))
grep -E "INFO|WARNING|ERROR|Error" "$OUT/bench.log" | tail -25
"$PYTHON" - "$OUT/result.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({k: r[k] for k in ("device", "stopped", "targets", "options", "projection") if k in r}, indent=1))
EOF

# 2. The demo's stages on the GPU, in a scratch copy of the code (its own data, caches, models).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar --exclude=./.venv --exclude=./.git --exclude=./.dvc/cache --exclude=./data --exclude=./features \
    --exclude=./models --exclude=./metrics --exclude=./checkpoints -cf - . | tar -xf - -C "$work"
if ! "$PYTHON" -c "import dvclive" 2>/dev/null; then  # train logs through DVCLive: a no-op stand-in
  mkdir -p "$work/.stub"
  printf '%s\n' 'class Live:' '    def __init__(self, **kw): pass' '    def __enter__(self): return self' \
    '    def __exit__(self, *a): return False' '    def log_metric(self, *a, **k): pass' \
    '    def next_step(self): pass' > "$work/.stub/dvclive.py"
  export PYTHONPATH="$work/.stub${PYTHONPATH:+:$PYTHONPATH}"
fi
cd "$work" || exit 2

step() {  # step NAME COMMAND...: 120 s at most; its last log line and a CHECK line; count failures
  local name=$1
  shift
  SECONDS=0
  timeout 120 "$@" > step.log 2>&1
  local status=$?
  tail -n 1 step.log
  echo "CHECK $name: exit status $status in $SECONDS s"
  [ $status = 0 ] || failed=$((failed + 1))
  return $status
}
set_param() {  # set_param text.device cpu
  "$PYTHON" - "$1" "$2" <<'EOF'
import sys, yaml
key, value = sys.argv[1], yaml.safe_load(sys.argv[2])
p = yaml.safe_load(open("params.yaml"))
*parents, last = key.split(".")
d = p
for k in parents:
    d = d[k]
d[last] = value
open("params.yaml", "w").write(yaml.safe_dump(p, sort_keys=False))
EOF
}
weights() {  # the weights' hash and the validation losses of models/fusion
  echo "sha256 $(sha256sum models/fusion/model.safetensors 2>/dev/null | cut -c1-16)," \
       "val losses $("$PYTHON" -c "import json; print([round(r['val']['loss'], 6) for r in json.load(open('models/fusion/history.json'))])" 2>&1)"
}

{
  step download "$PYTHON" -m stages.download
  step prepare "$PYTHON" -m stages.prepare
  step demo_encoder "$PYTHON" -m stages.demo_encoder
  step cache_images "$PYTHON" -m stages.cache_images
  set_param text.device cpu
  step "embed_text (cpu)" "$PYTHON" -m stages.embed_text && mv features/text.h5 text_cpu.h5
  set_param text.device auto
  if step "embed_text (auto)" "$PYTHON" -m stages.embed_text && [ -e text_cpu.h5 ]; then
    "$PYTHON" - <<'EOF' || failed=$((failed + 1))
import numpy as np
from cxrfusion.formats import read_text_cache
u1, v1, _ = read_text_cache("text_cpu.h5")
u2, v2, _ = read_text_cache("features/text.h5")
assert (u1 == u2).all(), "the two runs of embed_text wrote other studies"
cos = (v1 * v2).sum(1) / np.linalg.norm(v1, axis=1) / np.linalg.norm(v2, axis=1)
print(f"CHECK embed_text auto vs cpu: {len(u1)} reports, max |diff| {np.abs(v1 - v2).max():.2e}, "
      f"min cosine {cos.min():.6f}")
EOF
  fi
  for deterministic in false false true true; do
    set_param train.deterministic "$deterministic"
    rm -rf checkpoints models/fusion
    step "train fusion (deterministic=$deterministic)" "$PYTHON" -m stages.train fusion && weights
  done
  step "evaluate fusion" "$PYTHON" -m stages.evaluate fusion
  image=$(find -L data/raw/images -name '*.png' | sort | head -n 1)
  step predict "$PYTHON" -m cxrfusion.predict --model models/fusion --image "$image" \
    --findings "The heart is enlarged." --impression "Cardiomegaly."
} > >(tee "$OUT/stages.log") 2>&1  # not a pipe: `failed` must survive the block
sleep 1  # tee's last lines
echo "gpu_check: $failed step(s) failed; outputs in $OUT"
[ "$failed" = 0 ]
