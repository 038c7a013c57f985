#!/usr/bin/env bash
# The runs the GPU notes quote, on one machine with 2 GPUs (the device tool's nvidia-h100-x2), after
# ../shared/gpu/README.md's install:  PYTHONPATH=/tmp/site bash benchmarks/gpu_suite.sh <part> <out dir>
#   part "train": NCCL training runs (flat and DMT, 2 emulated hosts x RANKS_PER_HOST GPUs, default 1)
#                 + the NCCL parity tests
#   part "bench": dmt bench on the Criteo-shaped model, fast (NVLink) and slow (sockets) links
#   part "tp":    the same with the TP plan of the generated data (4 towers; benchmarks/plans/)
#   part "profile": torch.profiler tables of flat, dmt and stock steps on the fast link
#   part "tf32":  fast link, 2 towers and the TP plan, with TF32 matmuls
#   part "2x2":   4 GPUs (nvidia-h100-x4) as 2 emulated hosts x 2 GPUs: 2 towers and the TP plan,
#                 all-NVLink and all-sockets (NCCL's transport is per process: no selective slow link)
#   part "2x1":   the "bench" and "tp" runs of 2 hosts x 1 GPU in one call (fewer invocations)
#   part "2x2cw": 2x2, 2 towers sharded column-wise inside each host
#   SUFFIX=_r2 before the command writes repeats into new files
set -uo pipefail
part=$1; out=$2; mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD
py=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$py -c "import torch, torchrec; from importlib.metadata import version; print('torch', torch.__version__, 'torchrec', version('torchrec'))" 2>&1 | tail -1

if [ "$part" = train ]; then
  $py -m dmt.cli gen-data --rows 400000 --out /tmp/d.tsv --seed 0
  $py -m dmt.cli partition --data /tmp/d.tsv --num-towers 4 --hosts 2 --out /tmp/plan.json --truth /tmp/d.tsv.truth.json 2>&1 | tail -3
  for run in "flat" "dmt --plan /tmp/plan.json --tower-module identity" "dmt_c4 --plan /tmp/plan.json --tower-module linear --tower-compression 4"; do
    set -- $run; name=$1; shift
    $py -m dmt.cli train --data /tmp/d.tsv "$@" --hosts 2 --ranks-per-host ${RANKS_PER_HOST:-1} --batch-size 1024 --eval-every 100 \
        --no-progress --out "$out/train_$name" 2>&1 | grep -v -i "warn" | tail -4
  done
  $py -m pytest -q -p no:cacheprovider tests/test_tower_sharding.py -k "nccl or cuda" 2>&1 | tail -3
fi

if [ "$part" = bench ]; then
  common="--hosts 2 --ranks-per-host 1 --num-embeddings 200000 --embedding-dim 128 --batch-size 8192 --towers 2
          --tower-module linear --tower-compression 4 --warmup 10 --steps 30 --no-progress"
  for link in fast slow; do
    flag=""; [ $link = slow ] && flag="--slow-link"
    $py -m dmt.cli bench $common $flag --variants flat,dmt,stock,dmt+comm --comm-compression fp16 \
        --out "$out/bench_$link.json" 2>&1 | grep -v -i "warn" | tail -9
    $py -m dmt.cli bench $common $flag --variants flat,dmt+comm --comm-compression lossy:fp16,lossy_eb=0.01 \
        --out "$out/bench_${link}_lossy.json" 2>&1 | grep -v -i "warn" | tail -5
  done
fi

if [ "$part" = tp ]; then
  common="--hosts 2 --ranks-per-host 1 --num-embeddings 200000 --embedding-dim 128 --batch-size 8192
          --plan benchmarks/plans/tp_4towers_2hosts.json --tower-module linear --tower-compression 4 --warmup 10 --steps 30 --no-progress"
  for link in fast slow; do
    flag=""; [ $link = slow ] && flag="--slow-link"
    $py -m dmt.cli bench $common $flag --variants flat,dmt,stock,dmt+comm --comm-compression fp16 \
        --out "$out/bench_tp_$link.json" 2>&1 | grep -v -i "warn" | tail -9
  done
fi

if [ "$part" = profile ]; then
  $py -m dmt.cli bench --hosts 2 --ranks-per-host 1 --num-embeddings 200000 --embedding-dim 128 --batch-size 8192 \
      --towers 2 --tower-module linear --tower-compression 4 --warmup 10 --steps 20 --variants flat,dmt,stock \
      --profile "$out/profile" --out "$out/bench_fast_profiled.json" --no-progress 2>&1 | grep -v -i "warn" | tail -7
  rm -f "$out"/profile/*rank1.trace.json
fi

if [ "$part" = tf32 ]; then
  common="--hosts 2 --ranks-per-host 1 --num-embeddings 200000 --embedding-dim 128 --batch-size 8192
          --tower-module linear --tower-compression 4 --warmup 10 --steps 30 --no-progress --tf32"
  for plan in "--towers 2" "--plan benchmarks/plans/tp_4towers_2hosts.json"; do
    name=$([ "$plan" = "--towers 2" ] && echo towers2 || echo tp)
    for link in fast slow; do
      flag=""; [ $link = slow ] && flag="--slow-link"
      $py -m dmt.cli bench $common $plan $flag --variants flat,dmt,stock,dmt+comm --comm-compression fp16 \
          --out "$out/bench_tf32_${name}_$link.json" 2>&1 | grep -v -i "warn" | tail -9
    done
  done
fi

if [ "$part" = 2x2 ] || [ "$part" = 2x1 ]; then
  L=${part:2:1}; sfx=${SUFFIX:-}  # SUFFIX=_r2: a repeat of the same runs in new files
  common="--hosts 2 --ranks-per-host $L --num-embeddings 200000 --embedding-dim 128 --batch-size 8192
          --tower-module linear --tower-compression 4 --warmup 10 --steps 30 --no-progress"
  for plan in "--towers 2" "--plan benchmarks/plans/tp_4towers_2hosts.json"; do
    name=$([ "$plan" = "--towers 2" ] && echo towers2 || echo tp)
    for link in fast slow; do
      flag=""; [ $link = slow ] && flag="--slow-link"
      timeout 170 $py -m dmt.cli bench $common $plan $flag --variants flat,dmt,stock,dmt+comm,flat+comm \
          --comm-compression fp16 --out "$out/bench_${part}_${name}_$link$sfx.json" 2>&1 | grep -v -i "warn" | tail -8
      sleep 3  # let the previous job's rendezvous port go (one 2x1 start failed to reach its store)
    done
  done
fi

if [ "$part" = 2x2cw ]; then  # towers column-wise inside the host (exact for Adagrad, not row-wise Adagrad)
  for link in fast slow; do
    flag=""; [ $link = slow ] && flag="--slow-link"
    timeout 170 $py -m dmt.cli bench --hosts 2 --ranks-per-host 2 --num-embeddings 200000 --embedding-dim 128 \
        --batch-size 8192 --towers 2 --tower-module linear --tower-compression 4 --warmup 10 --steps 30 --no-progress $flag \
        --tower-sharding table_column_wise --variants flat,dmt,stock --out "$out/bench_2x2_towers2_cw_$link${SUFFIX:-}.json" \
        2>&1 | grep -v -i "warn" | tail -6
    sleep 3
  done
fi
