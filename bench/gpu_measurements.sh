#!/usr/bin/env bash
# The GPU measurements issue 17 still needs, in one call of at most about 9 minutes (about 5 on
# an H100 or H200), on a machine with a CUDA device and the project installed for $PYTHON:
#   1. image BC at batch 1,024 (mlp, CUDA graphs, the loss compiled), with the camera encoder
#      as it is and with each variant of bench/encoder_variants.py (each checked against the
#      encoder first): frames per second against the goal of 150 k, and each variant over the
#      encoder as it is in the same call;
#   2. low-dim BC at batch 8,192 (mlp, chunks 1 and 8): the goal of 20 M samples/s;
#   3. act and diffusion on images at batch 1,024 with the variant that gave the most frames/s.
# Each part has a time limit of its own; a part that fails or runs out is reported and the
# next one runs. The logs and each run's JSON go to RESULTS_DIR; the summary is printed last.
#
#   bench/gpu_measurements.sh [RESULTS_DIR]    (default bench/results/gpu; PYTHON=python)
#
# What to run after it, in a second call, for the kernels of the best variant's step:
#   python bench/step_profile.py --device cuda --batch 1024 --compile default --steps 10 \
#       --encoder-variant NAME
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DIR=${1:-bench/results/gpu}
mkdir -p "$DIR"
COMMON=(--device cuda --workers 4 --seconds 1.2 --warmup-seconds 0.4)

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "[gpu] error: no CUDA device for $PY (torch.cuda.is_available() is false)" >&2
    exit 2
fi
"$PY" -c "import torch; print('[gpu]', torch.cuda.get_device_name(0), 'torch', torch.__version__)"

run() {  # run NAME LIMIT_S ARGS...: one train_throughput call, its log and JSON kept as NAME
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$PY" bench/train_throughput.py "${COMMON[@]}" "$@" > "$DIR/$name.log" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
        cp bench/results/train_throughput.json "$DIR/$name.json"
    else
        local why="exit $rc"
        [ $rc -eq 124 ] && why="over its limit of ${limit} s"
        echo "[gpu] $name: $why after $((SECONDS - t0)) s; the end of its log:"
        tail -5 "$DIR/$name.log"
    fi
    echo "[gpu] $name: $((SECONDS - t0)) s"
}

for v in as-is channel-stats-gn patch-rows both; do
    run "image_mlp_$v" 90 --families "" --image-batch 1024 --image-families mlp \
        --compile default --encoder-variant "$v"
done
run low_dim_mlp 60 --batch-sizes 8192 --chunks 1,8 --image-batch 0

best=$("$PY" - "$DIR" <<'EOF'
import json, sys
from pathlib import Path

best, rate = "as-is", 0.0
for f in sorted(Path(sys.argv[1]).glob("image_mlp_*.json")):
    row = json.loads(f.read_text())["rows"][0]
    got = row.get("compiled", row["ours"])["samples_per_s"]
    if got > rate:
        best, rate = f.stem[len("image_mlp_"):], got
print(best)
EOF
)
run "image_act_diffusion_$best" 140 --families "" --image-batch 1024 \
    --image-families act,diffusion --compile default --encoder-variant "$best"

"$PY" - "$DIR" <<'EOF'
import json, sys
from pathlib import Path

folder = Path(sys.argv[1])
print("\n[gpu] summary (per second; compiled: the loss compiled, graphs on; ours: graphs on)")
base = None
for name in ("as-is", "channel-stats-gn", "patch-rows", "both"):
    f = folder / f"image_mlp_{name}.json"
    if not f.exists():
        print(f"  image mlp batch 1024, encoder {name:16s} no result (see its log)")
        continue
    r = json.loads(f.read_text())["rows"][0]
    comp = r.get("compiled", {}).get("samples_per_s", float("nan"))
    base = comp if name == "as-is" else base
    over = f", {comp / base:.3f}x the encoder as it is" if base and name != "as-is" else ""
    print(f"  image mlp batch 1024, encoder {name:16s} compiled {comp:10,.0f}  ours "
          f"{r['ours']['samples_per_s']:10,.0f}  data {100 * r['ours']['data_share']:.1f} %"
          f"{over}  (goal 150,000)")
for f in sorted(folder.glob("low_dim_mlp.json")) + sorted(folder.glob("image_act_diff*.json")):
    res = json.loads(f.read_text())
    for r in res["rows"]:
        comp = r.get("compiled", {}).get("samples_per_s")
        print(f"  {r['policy']:21s} batch {r['batch']:5d} ours {r['ours']['samples_per_s']:12,.0f}"
              + (f"  compiled {comp:10,.0f}" if comp else "")
              + f"  data {100 * r['ours']['data_share']:.1f} %  encoder {res['encoder_variant']}")
EOF
