#!/usr/bin/env bash
# The runs the GPU notes quote, after ../shared/gpu/README.md's install:
#   PYTHONPATH=/tmp/site bash benchmarks/gpu_suite.sh <part> <out dir>
# The default scenario is a 4-GPU box (nvidia-h200-x4) as 2 emulated hosts x 2 GPUs behind the
# hierarchical link: NVLink inside a host, NCCL TCP sockets between hosts (dmt bench --link
# hierarchical: NCCL_HOSTID per host). --link nvlink (all NVLink) and --link sockets (all TCP) are
# the two extremes. Each part fits one device call (10 minutes).
#   part "hier":  dmt bench at BATCHES (default "8192 2048") per GPU, invocations REPS ("1 2") each:
#                 every flat baseline (table-wise, table-row-wise, row-wise, torchrec's planner, 2D)
#                 and DMT with whole tables (tw), row-wise (twrw) and column-wise (twcw) inside a
#                 host, fp32 and fp16 exchange; JSONs bench_hier_b<batch>_r<n>.json (rewritten after
#                 every variant). Invocations that would end past DEADLINE_S (540 s) are skipped
#                 with the line to run them in a next call (e.g. BATCHES=2048).
#   part "hier_tp": the same link, batch 8192, the TP plan (4 towers, benchmarks/plans/)
#   part "hier_check": NCCL_DEBUG=INFO of a tiny run: "via P2P" inside a host, "via NET/Socket" between
#   part "parity": the NCCL parity tests (tests/test_tower_sharding*.py -k "nccl or cuda"), 4 GPUs
#   part "train": NCCL training runs (flat and DMT, 2 emulated hosts x RANKS_PER_HOST GPUs, default 1)
#                 + the NCCL parity tests
#   part "bench": dmt bench on the Criteo-shaped model, fast (NVLink) and slow (sockets) links
#   part "tp":    the same with the TP plan of the generated data (4 towers; benchmarks/plans/)
#   part "profile": torch.profiler tables of flat, dmt and stock steps on the fast link
#   part "tf32":  fast link, 2 towers and the TP plan, with TF32 matmuls
#   part "2x2":   4 GPUs (nvidia-h100-x4) as 2 emulated hosts x 2 GPUs: 2 towers and the TP plan,
#                 over LINKS (default "fast slow": NVLink and sockets, the extremes; add hierarchical)
#   part "2x1":   the "bench" and "tp" runs of 2 hosts x 1 GPU in one call (fewer invocations)
#   part "2x2cw": 2x2, 2 towers sharded column-wise inside each host
#   part "producer": benchmarks.bench_producer on CUDA over scale_data's days: 0, 1, 2 threads and auto (then, e.g.,
#                 NAMES=dmt BATCH=2048 TRAIN_EXTRA="--max-steps 1000 --data-workers 1" SUFFIX=_w1 ... scale_train)
#   SUFFIX=_r2 before the command writes repeats into new files
# Older JSONs call the NVLink runs "fast" and the sockets runs "slow" (--slow-link, now --link sockets).
set -uo pipefail
part=$1; out=$2; mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD
py=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$py -c "import torch, torchrec; from importlib.metadata import version; print('torch', torch.__version__, 'torchrec', version('torchrec'))" 2>&1 | tail -1

# fast = NVLink (NCCL's defaults), slow = sockets for every collective, hierarchical = both by host
link_flag() { case $1 in slow) echo "--link sockets";; hierarchical) echo "--link hierarchical";; *) echo "";; esac; }
model="--num-embeddings 200000 --embedding-dim 128 --tower-module linear --tower-compression 4"
short="--warmup 10 --steps 30 --count-steps 1 --no-progress"
# Every flat baseline and DMT layout, fp32 and fp16 (+comm). "flat" is table-wise and "dmt" whole
# tables inside a host (--tower-sharding table_wise), so bench_summary's flat/dmt columns still read.
# Row-wise flat is left out at fp16: its reduce-scatter moves 4x table-wise's cross-host bytes.
# The GPU-untested layouts (torchrec's planner, 2D) come last: the JSON is rewritten after every
# variant, so a hang there (the timeout kills it) keeps the others, and a layout that cannot be
# built is reported as failed while the rest are timed.
HIER_VARIANTS=${HIER_VARIANTS:-flat,flat:table_row_wise,dmt,dmt:table_row_wise,flat+comm,flat:table_row_wise+comm,dmt+comm,dmt:table_row_wise+comm,dmt:table_column_wise,flat:row_wise,flat:planner,flat:planner+comm,flat:2d,flat:2d+comm}

if [ "$part" = hier ]; then
  # A device call ends at 10 minutes: an invocation that would not finish by DEADLINE_S (default
  # 540 s after this script started; the longest invocation so far is the estimate) is skipped
  # with a line saying how to run it in the next call.
  longest=120
  for batch in ${BATCHES:-8192 2048}; do
    for rep in ${REPS:-1 2}; do
      left=$(( ${DEADLINE_S:-540} - SECONDS ))
      if [ "$left" -lt "$longest" ]; then
        echo "skipped batch $batch run $rep (${left}s left): rerun as BATCHES=$batch REPS=$rep ... hier"; continue
      fi
      start=$SECONDS
      timeout "$left" $py -m dmt.cli bench --hosts 2 --ranks-per-host 2 --link hierarchical $model $short \
          --batch-size "$batch" --towers 2 --tower-sharding table_wise --comm-compression fp16 \
          --variants "$HIER_VARIANTS" --out "$out/bench_hier_b${batch}_r${rep}${SUFFIX:-}.json" 2>&1 | grep -v -i "warn" | tail -36
      took=$(( SECONDS - start )); [ "$took" -gt "$longest" ] && longest=$took
      echo "batch $batch run $rep: ${took}s"
      sleep 3  # let the previous job's rendezvous port go
    done
  done
fi

if [ "$part" = hier_tp ]; then
  timeout "${BENCH_TIMEOUT:-280}" $py -m dmt.cli bench --hosts 2 --ranks-per-host 2 --link hierarchical $model $short \
      --batch-size 8192 --plan benchmarks/plans/tp_4towers_2hosts.json --tower-sharding table_wise --comm-compression fp16 \
      --variants flat,flat:table_row_wise,flat:planner,dmt,dmt:table_row_wise,flat+comm,flat:table_row_wise+comm,dmt+comm \
      --out "$out/bench_hier_tp_b8192${SUFFIX:-}.json" 2>&1 | grep -v -i "warn" | tail -24
fi

if [ "$part" = hier_check ]; then
  NCCL_DEBUG=INFO timeout 200 $py -m dmt.cli bench --hosts 2 --ranks-per-host 2 --link hierarchical \
      --num-embeddings 1000 --embedding-dim 16 --batch-size 256 --warmup 1 --steps 2 --no-progress --variants flat,dmt \
      2>&1 | grep -oE "via (P2P|NET/Socket|SHM|NET/IB)[^ ]*" | sort | uniq -c
fi

if [ "$part" = parity ]; then
  $py -m pytest -q -p no:cacheprovider tests/test_tower_sharding.py tests/test_tower_sharding_tw.py -k "nccl or cuda" 2>&1 | tail -5
fi

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
    flag=$(link_flag $link)
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
    flag=$(link_flag $link)
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
      flag=$(link_flag $link)
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
    for link in ${LINKS:-fast slow}; do
      flag=$(link_flag $link)
      timeout 170 $py -m dmt.cli bench $common $plan $flag --variants flat,dmt,stock,dmt+comm,flat+comm \
          --comm-compression fp16 --out "$out/bench_${part}_${name}_$link$sfx.json" 2>&1 | grep -v -i "warn" | tail -8
      sleep 3  # let the previous job's rendezvous port go (one 2x1 start failed to reach its store)
    done
  done
fi

if [ "$part" = 2x2cw ]; then  # towers column-wise inside the host (exact for Adagrad, not row-wise Adagrad)
  for link in fast slow; do
    flag=$(link_flag $link)
    timeout 170 $py -m dmt.cli bench --hosts 2 --ranks-per-host 2 --num-embeddings 200000 --embedding-dim 128 \
        --batch-size 8192 --towers 2 --tower-module linear --tower-compression 4 --warmup 10 --steps 30 --no-progress $flag \
        --tower-sharding table_column_wise --variants flat,dmt,stock --out "$out/bench_2x2_towers2_cw_$link${SUFFIX:-}.json" \
        2>&1 | grep -v -i "warn" | tail -6
    sleep 3
  done
fi

# Issue 15/16: the whole job at data scale on the hierarchical link. "scale_data" generates ROWS
# (default 100M) rows as 24 Terabyte-named days and preprocesses them (timed); "scale_train" trains
# one epoch (--split terabyte) of NAMES (default "dmt flat") of model PRESET (criteo; or
# mlperf_dcnv2) at BATCH per GPU on HOSTS x L GPUs (DMT: 2 contiguous towers, TOWER_MODULE (dot) c=4) and,
# with BENCH=1, runs dmt bench --pipeline (steps back to back, as the job) on the same model and
# batch for the samples/s the job should reach.
scale=${SCALE_DIR:-/tmp/scale}
if [ "$part" = scale_data ]; then
  rows=${ROWS:-100000000}; rm -rf "$scale"; mkdir -p "$scale"
  t0=$SECONDS; $py -m dmt.cli gen-data --rows "$rows" --days 24 --out "$scale/tsv" --seed 0 2>&1 | tail -1
  echo "gen-data: $((SECONDS - t0)) s"; du -sh "$scale/tsv"
  t0=$SECONDS; $py -m dmt.cli preprocess "$scale"/tsv/day_{0..23} --out "$scale/npy" --no-progress 2>&1 | tail -1
  echo "preprocess: $((SECONDS - t0)) s"; du -sh "$scale/npy"; nproc
fi
if [ "$part" = producer ]; then  # what the batch-building threads cost a launch-bound step (GIL), on CUDA
  [ -d "$scale/npy" ] || { echo "run scale_data first (ROWS=8000000 is enough)"; exit 2; }
  $py -m benchmarks.bench_producer --data "$scale/npy" --device cuda --batch-size "${BATCH:-2048}" 2>&1 | tail -6
fi
if [ "$part" = scale_train ]; then
  L=${L:-1}; batch=${BATCH:-8192}; link=${LINK:-hierarchical}
  model="--preset ${PRESET:-criteo} --num-embeddings 200000 --embedding-dim 128"
  module=${TOWER_MODULE:-dot}  # dot: learns as fast as flat at c=4 (benchmarks/results/learning); linear: earlier runs
  dmtargs="--plan benchmarks/plans/contiguous_2towers_2hosts.json --tower-module $module --tower-compression 4 --tower-sharding table_wise"
  for name in ${NAMES:-dmt flat}; do
    extra=$([ "$name" = dmt ] && echo "$dmtargs" || echo "--flat-sharding table_wise")
    t0=$SECONDS
    timeout "${TRAIN_TIMEOUT:-500}" $py -m dmt.cli train --data "$scale/npy" --split terabyte $model $extra --hosts 2 \
        --ranks-per-host "$L" --link "$link" --batch-size "$batch" --epochs 1 ${TRAIN_EXTRA:-} --no-progress \
        --out "$out/scale_${name}_b${batch}${SUFFIX:-}" 2>&1 | grep -v -i "warn" | tail -3
    echo "train $name: $((SECONDS - t0)) s wall"; sleep 3
  done
  if [ "${BENCH:-0}" = 1 ]; then
    timeout 200 $py -m dmt.cli bench --hosts 2 --ranks-per-host "$L" --link "$link" --num-embeddings 200000 \
        --embedding-dim 128 --batch-size "$batch" --towers 2 --tower-module "$module" --tower-compression 4 \
        --tower-sharding table_wise --warmup 10 --steps 30 --no-progress --variants flat,dmt --pipeline \
        --out "$out/scale_bench_b${batch}${SUFFIX:-}.json" 2>&1 | grep -v -i "warn" | tail -6
  fi
fi
