#!/bin/bash
# Measures docs/performance.md's GPU numbers and checks, in one call (issue 5): bench/benchmark.py
# at full size with train.compile, then the demo's stages run directly (no dvc) through the real
# code on the GPU, in a scratch copy.
#
#   OUT=out BENCH_LIMIT=380 bash bench/gpu_check.sh   # on one H100/H200, from a checkout
#                                                     # (no make repro needed)
# Writes into $OUT (default: a new temporary folder, printed at the end):
#   result.json   the benchmark's JSON (copy it to bench/result.json); if the benchmark runs past
#                 its limit ($BENCH_LIMIT s, default 400) it holds the sections measured so far
#   bench.log     the benchmark's progress log
#   stages.log    part 2, the demo on the GPU: a CHECK line per step (its exit status and time)
#                 and per check below, each ending in ok or FAILED
#   steps/NN.log  each step's whole output, its command on the first line
#
# Part 2 runs the demo at its default size (500 studies, 48 px, 3 epochs) on one text input
# (findings+impression) and seeds 0 and 1: download, prepare, demo_encoder and cache_images on
# the CPU, then with train.device and text.device auto (the GPU):
#   embed_text       on the CPU and on the GPU: the same studies; max |diff| and min cosine
#   embed_images     the demo's frozen ViT on the CPU and on the GPU (bf16): likewise
#                    printed (fails unless min cosine > 0.999)
#   train            fusion seed 0, twice with train.deterministic=false and twice with true:
#                    each run's device, weights' sha256 and val losses; the two true runs must
#                    give the same sha256 (the false ones are reported only)
#   bf16             cxrfusion.scoring.forward on the trained model: logits and the head's
#                    output float32, the CNN's last block bfloat16 (not applicable on a CPU)
#   GPU vs CPU       cxrfusion.scoring.score of the validation split with the same weights on
#                    the CPU (float32) and on the GPU (amp: bf16 CNN): max |prob diff| < 0.05,
#                    mean < 0.005, study AUROCs within 0.01 (bf16 emulated on the CPU gave the
#                    demo's model max 0.015, mean 0.0009, the same validation AUROC)
#   evaluate, predict  that run, on the GPU (stages.evaluate, cxrfusion.predict)
#   options          fusion seed 1 for one epoch with train.augment=affine+jitter,
#                    model.fusion=gated, train.lr_backbone=0.0003, then evaluated: its two
#                    learning rates logged, metrics/test/<run>.json has report_weight
# A step runs STEP_LIMIT s at most (default 120) and part 2 STAGES_LIMIT s in all (default 190;
# about 2 minutes on a GPU, mostly process start-up): a step left without time fails unrun.
# With REQUIRE_CUDA=0 (a dry run on a CPU) the defaults are 900 and 5400 s.
# Exits 1 if a step or check failed. Nothing in the checkout changes. Needs torch, timm,
# transformers, h5py, pandas, scikit-learn, pyyaml, pillow and tqdm; dvc and dvclive need not
# be installed.
#
# Other settings: BENCH=0 skips part 1; PARAMS="key=value ..." (no spaces in a value: [0,1])
# sets parameters of part 2 after its own, e.g. a smaller demo for a quicker dry run (4 minutes
# on 2 busy cores): BENCH=0 PARAMS="demo.studies=60 split.min_studies=5 image.size=32
# train.epochs=1 train.batch_size=8". tests/test_gpu_check.py reads the script without running
# it: its commands must parse against the current command lines and parameters.
#
# A dry run of the script itself on a CPU (tiny benchmark; the GPU steps on the CPU, where the
# bf16 check says not applicable; 8 to 12 minutes on 2 busy cores):
#   BENCH_ARGS="--tiny --device cpu" REQUIRE_CUDA=0 PYTHON=.venv/bin/python OUT=/tmp/gpucheck \
#     bash bench/gpu_check.sh
set -u -o pipefail
PYTHON=${PYTHON:-python3}
BENCH_ARGS=${BENCH_ARGS:---compile --compile-limit 120}  # 120: compiling must end inside BENCH_LIMIT (380 s in the one call)
BENCH_LIMIT=${BENCH_LIMIT:-400}
BENCH=${BENCH:-1}
PARAMS=${PARAMS:-}
REQUIRE_CUDA=${REQUIRE_CUDA:-1}
if [ "$REQUIRE_CUDA" = 1 ]; then  # part 2's time limits: one step's, all steps'
  STEP_LIMIT=${STEP_LIMIT:-120} STAGES_LIMIT=${STAGES_LIMIT:-190}
else  # a dry run on a CPU: minutes a training run
  STEP_LIMIT=${STEP_LIMIT:-900} STAGES_LIMIT=${STAGES_LIMIT:-5400}
fi
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
if [ "$BENCH" = 0 ]; then
  echo "CHECK benchmark: skipped (BENCH=0)"
else
  timeout "$BENCH_LIMIT" "$PYTHON" bench/benchmark.py $BENCH_ARGS > "$OUT/result.json" 2> "$OUT/bench.log"
  status=$?
  echo "CHECK benchmark: exit status $status"
  [ $status = 0 ] || failed=$((failed + 1))
  grep -E "INFO|WARNING|ERROR|Error" "$OUT/bench.log" | tail -25
  "$PYTHON" - "$OUT/result.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except ValueError as err:
    sys.exit(f"result.json holds no JSON ({err}): see bench.log")
print(json.dumps({k: r[k] for k in ("device", "stopped", "targets", "options", "projection") if k in r}, indent=1))
EOF
fi

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
rm -rf "$OUT/steps" && mkdir -p "$OUT/steps" || exit 2
device=cuda  # where the steps on auto must run
[ "$REQUIRE_CUDA" = 1 ] || device=cpu
input=findings+impression  # the one text input
deadline=$(( $(date +%s) + STAGES_LIMIT ))
steps=0 step_log=

step() {  # step NAME COMMAND...: STEP_LIMIT s at most (less when part 2's time runs short); the
          # CHECK lines and the last line of its log, and a CHECK line; count failures
  local name=$1 start limit status
  shift
  steps=$((steps + 1))
  step_log=$OUT/steps/$(printf %02d "$steps").log
  start=$(date +%s)
  limit=$((deadline - start))
  [ "$limit" -le "$STEP_LIMIT" ] || limit=$STEP_LIMIT
  if [ "$limit" -le 0 ]; then
    echo "CHECK $name: not run, part 2's $STAGES_LIMIT s (STAGES_LIMIT) are spent: FAILED" | tee "$step_log"
    failed=$((failed + 1))
    return 1
  fi
  echo "# $name: $*" > "$step_log"
  timeout "$limit" "$@" >> "$step_log" 2>&1
  status=$?
  grep '^CHECK' "$step_log"
  tail -n 1 "$step_log" | grep -v '^CHECK'
  echo "CHECK $name: exit status $status in $(( $(date +%s) - start )) s"
  [ $status = 0 ] || failed=$((failed + 1))
  return $status
}
set_param() {  # set_param text.device cpu: a parameter params.yaml has (else counted failed)
  "$PYTHON" - "$1" "$2" <<'EOF' || { echo "CHECK set_param $1 $2: FAILED"; failed=$((failed + 1)); }
import sys, yaml
key, value = sys.argv[1], yaml.safe_load(sys.argv[2])
p = yaml.safe_load(open("params.yaml"))
*parents, last = key.split(".")
d = p
for k in parents:
    d = d[k]
if last not in d:
    sys.exit(f"set_param: params.yaml has no {key}")
d[last] = value
open("params.yaml", "w").write(yaml.safe_dump(p, sort_keys=False))
EOF
}
ran_on() {  # ran_on WHAT: the device the last step logged ("on 1 x cuda:0") must be $device
  local on
  on=$(grep -o 'on [0-9]* x [a-z]*[:0-9]*' "$step_log" | tail -n 1)
  case $on in
    *" x $device"*) echo "CHECK $1 ran $on: ok" ;;
    *) echo "CHECK $1 ran ${on:-on an unlogged device}, not $device: FAILED"; failed=$((failed + 1)) ;;
  esac
}
declare -A shas  # deterministic -> the weights' sha256 of its runs
weights() {  # weights DETERMINISTIC: the hash and the validation losses of fusion seed 0
  local folder=models/fusion/$input/seed-0 sha
  sha=$(sha256sum "$folder/model.safetensors" | cut -d' ' -f1)
  shas[$1]="${shas[$1]:-}${shas[$1]:+ }$sha"
  echo "CHECK weights (deterministic=$1): sha256 ${sha:0:16}, val losses $("$PYTHON" -c "import json, sys; print([round(r['val']['loss'], 6) for r in json.load(open(sys.argv[1]))])" "$folder/history.json" 2>&1)"
}

{
  set_param train.seeds "[0, 1]"  # seed 0: the repeatability runs; 1: the options run
  set_param text.inputs "[$input]"
  set_param compare.primary "fusion-image/$input"  # the declared family names the input run
  set_param compare.secondary "[]"
  set_param compare.encoders "[]"
  for setting in $PARAMS; do
    set_param "${setting%%=*}" "${setting#*=}"
  done
  step download "$PYTHON" -m stages.download
  step prepare "$PYTHON" -m stages.prepare
  step demo_encoder "$PYTHON" -m stages.demo_encoder
  step cache_images "$PYTHON" -m stages.cache_images

  set_param text.device cpu
  step "embed_text $input (cpu)" "$PYTHON" -m stages.embed_text "$input" &&
    mv "features/text/$input.h5" text_cpu.h5
  set_param text.device auto
  if step "embed_text $input (auto)" "$PYTHON" -m stages.embed_text "$input"; then
    ran_on "embed_text (auto)"
    [ -e text_cpu.h5 ] && step "embed_text auto vs cpu" "$PYTHON" - text_cpu.h5 "features/text/$input.h5" <<'EOF'
import sys
import numpy as np
from cxrfusion.formats import read_text_cache
u1, v1, _ = read_text_cache(sys.argv[1])
u2, v2, _ = read_text_cache(sys.argv[2])
assert np.array_equal(u1, u2), "the two runs of embed_text wrote other studies"
cos = (v1 * v2).sum(1) / np.linalg.norm(v1, axis=1) / np.linalg.norm(v2, axis=1)
ok = cos.min() > 0.999
print(f"CHECK embed_text auto vs cpu: {len(u1)} reports, max |diff| {np.abs(v1 - v2).max():.2e}, "
      f"min cosine {cos.min():.6f} (tolerance: > 0.999): {'ok' if ok else 'FAILED'}")
sys.exit(0 if ok else 1)
EOF
  fi

  # the frozen image encoder (the demo's tiny ViT): embed_images on the CPU and on the GPU (bf16)
  step demo_image_encoder "$PYTHON" -m stages.demo_image_encoder
  set_param frozen_image.device cpu
  step "embed_images demo_vit (cpu)" "$PYTHON" -m stages.embed_images demo_vit &&
    mv features/images/demo_vit.h5 frozen_cpu.h5
  set_param frozen_image.device auto
  if step "embed_images demo_vit (auto)" "$PYTHON" -m stages.embed_images demo_vit; then
    ran_on "embed_images (auto)"
    [ -e frozen_cpu.h5 ] && step "embed_images auto vs cpu" "$PYTHON" - frozen_cpu.h5 \
      features/images/demo_vit.h5 <<'EOF'
import sys
import numpy as np
from cxrfusion.formats import read_frozen_cache
f1, v1, _ = read_frozen_cache(sys.argv[1])
f2, v2, _ = read_frozen_cache(sys.argv[2])
assert np.array_equal(f1, f2), "the two runs of embed_images wrote other images"
cos = (v1 * v2).sum(1) / np.linalg.norm(v1, axis=1) / np.linalg.norm(v2, axis=1)
ok = cos.min() > 0.99  # bf16 on the GPU
print(f"CHECK embed_images auto vs cpu: {len(f1)} images, max |diff| {np.abs(v1 - v2).max():.2e}, "
      f"min cosine {cos.min():.6f} (tolerance: > 0.99, bf16): {'ok' if ok else 'FAILED'}")
sys.exit(0 if ok else 1)
EOF
  fi

  # the arm's tuning choice, which every train stage reads (no grid: an empty one, no training)
  step "tune fusion 0 $input" "$PYTHON" -m stages.tune fusion 0 "$input"
  for deterministic in false false true true; do
    set_param train.deterministic "$deterministic"
    rm -rf checkpoints "models/fusion/$input/seed-0"
    if step "train fusion 0 $input (deterministic=$deterministic)" \
        "$PYTHON" -m stages.train fusion 0 "$input"; then
      ran_on train
      weights "$deterministic"
    fi
  done
  read -r a b <<< "${shas[false]:-}"
  echo "CHECK deterministic=false, reported only: sha256 ${a:0:16} ${b:0:16}:" \
       "$([ -n "$b" ] && { [ "$a" = "$b" ] && echo same || echo different; } || echo "a run failed")"
  read -r a b <<< "${shas[true]:-}"
  if [ -n "$b" ] && [ "$a" = "$b" ]; then
    echo "CHECK deterministic=true repeatable: both runs sha256 ${a:0:16}: ok"
  else
    echo "CHECK deterministic=true repeatable: sha256 ${a:0:16} ${b:0:16}: FAILED (differ, or a run failed)"
    failed=$((failed + 1))
  fi

  step "bf16 and GPU vs CPU (fusion 0 $input)" "$PYTHON" - fusion 0 "$input" <<'EOF'
import sys
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from cxrfusion import formats, params
from cxrfusion.common import resolve_device
from cxrfusion.dataset import run_splits
from cxrfusion.metrics import study_predictions
from cxrfusion.model import load_model
from cxrfusion.saved_model import trained_settings
from cxrfusion.scoring import forward, score

p = params.load()
run = formats.run_of(sys.argv[1:], p)
device = resolve_device("auto")
batch = p.train.batch_size
val = run_splits(trained_settings(run.models, p), run, names=("val",))[0]["val"]
on_device = val.to(device)
model, _ = load_model(run.models, device)
failed = 0

# the CNN under bf16 autocast, the head and its logits in float32 (Classifier.classify)
cnn = model.cnn
last = cnn.blocks[-1] if hasattr(cnn, "blocks") else [m for m in cnn.modules()
                                                      if isinstance(m, torch.nn.Conv2d)][-1]
seen = {}

def record(name):
    def hook(module, inputs, output):  # returns None: the output is left as it is
        seen.setdefault(name, output.dtype)
    return hook

hooks = [last.register_forward_hook(record("cnn")), model.head.register_forward_hook(record("head"))]
_, images, text, _ = next(on_device.batches([torch.arange(min(batch, len(val)))]))
with torch.no_grad():
    logits = forward(model, images, text, amp=True)
for hook in hooks:
    hook.remove()
cuda = device.type == "cuda"
ok = logits.dtype == seen["head"] == torch.float32 and (seen["cnn"] == torch.bfloat16 or not cuda)
failed += not ok
print(f"CHECK bf16 autocast on {device}: logits {logits.dtype}, head {seen['head']}, CNN's last "
      f"block {seen['cnn']}" + ("" if cuda else " (bf16 not applicable: autocast runs on CUDA only)")
      + f": {'ok' if ok else 'FAILED'}")

# the validation split scored by the same weights on the CPU (float32) and on the device (amp)
cpu_model, _ = load_model(run.models, "cpu")
cpu_probs, cpu_loss = score(cpu_model, val, batch, amp=False)
dev_probs, dev_loss = score(model, on_device, batch, amp=True)

def auroc(probs):
    s = study_predictions(val.rows[["uid", "label"]].assign(probability=probs.astype("float64")))
    return roc_auc_score(s["label"], s["probability"]), len(s)

(a_cpu, studies), (a_dev, _) = auroc(cpu_probs), auroc(dev_probs)
diff = np.abs(cpu_probs - dev_probs)
# bf16 CNN: bf16 autocast emulated on the CPU moved the demo model's validation probabilities by
# 0.015 at most, 0.0009 on average, and left its validation AUROC as it was
ok = diff.max() < 0.05 and diff.mean() < 0.005 and abs(a_cpu - a_dev) <= 0.01
failed += not ok
print(f"CHECK {device.type} vs cpu validation: {len(val)} images ({studies} studies), |prob diff| "
      f"max {diff.max():.2e} mean {diff.mean():.2e}, AUROC cpu {a_cpu:.4f} {device.type} "
      f"{a_dev:.4f}, loss cpu {cpu_loss:.5f} {device.type} {dev_loss:.5f} (tolerance, bf16 CNN: "
      f"max < 0.05, mean < 0.005, AUROCs within 0.01): {'ok' if ok else 'FAILED'}")
sys.exit(1 if failed else 0)
EOF
  step "evaluate fusion 0 $input" "$PYTHON" -m stages.evaluate fusion 0 "$input"
  image=$(find -L data/raw/images -name '*.png' | sort | head -n 1)
  step "predict fusion 0 $input" "$PYTHON" -m cxrfusion.predict --model "models/fusion/$input/seed-0" \
    --image "$image" --findings "The heart is enlarged." --impression "Cardiomegaly."

  # the options beyond the original, on the GPU: one epoch
  set_param train.deterministic false
  set_param train.epochs 1
  set_param train.augment affine+jitter
  set_param model.fusion gated
  set_param train.lr_backbone 0.0003
  rm -rf checkpoints
  if step "train fusion 1 $input (affine+jitter, gated, lr_backbone 0.0003)" \
      "$PYTHON" -m stages.train fusion 1 "$input"; then
    ran_on "train (options)"
    train_log=$step_log
    step "evaluate fusion 1 $input (options)" "$PYTHON" -m stages.evaluate fusion 1 "$input" &&
      step "options check" "$PYTHON" - "fusion/$input/seed-1" "$train_log" <<'EOF'
import json, re, sys
run, train_log = sys.argv[1:]
model = json.load(open(f"models/{run}/model.json"))
t = json.load(open(f"models/{run}/params.json"))["train"]
epochs = len(json.load(open(f"models/{run}/history.json")))
rates = re.search(r"learning rates ([^)]*)\)", open(train_log).read())
test = json.load(open(f"metrics/test/{run}.json"))
w = test.get("report_weight", {}).get("studies", {})
ok = (model["fusion"] == "gated" and t["augment"] == "affine+jitter" and t["lr_backbone"] == 0.0003
      and epochs == 1 and rates is not None and "backbone 0.0003" in rates[1] and bool(w))
print(f"CHECK options: fusion {model['fusion']}, augment {t['augment']}, {epochs} epoch, learning "
      f"rates {rates[1] if rates else '(not logged)'}; test auroc {test['study']['auroc']:.3f}, "
      f"report_weight mean {w.get('mean', float('nan')):.3f} over the test studies: "
      f"{'ok' if ok else 'FAILED'}")
sys.exit(0 if ok else 1)
EOF
  fi
} > >(tee "$OUT/stages.log") 2>&1  # not a pipe: `failed` must survive the block
sleep 1  # tee's last lines
echo "gpu_check: $failed step(s) or check(s) failed; outputs in $OUT"
[ "$failed" = 0 ]
