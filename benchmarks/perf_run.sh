#!/usr/bin/env bash
# The throughput runs of docs/benchmarks.md on one GPU, in one call:
#
#   benchmarks/perf_run.sh OUT [compare] [levers] [pipeline]
#
# compare:  benchmarks/compare.py, the side-by-side table with the PyTorch peers ($COMPARE: the
#           comma-separated cases to run, default all)
# levers:   benchmarks/levers.py for the cases in $LEVERS (one process each; rn50_base profiles)
# pipeline: 2,048 generated 500x375 q90 JPEGs prepared as a folder dataset; the data benchmark
#           with $WORKERS grain workers (crops $AUGMENTS, JPEG decoding $DECODES: fast and exact
#           IDCT and upsampling on the host, or nvimgcodec[:BACKENDS]: data.decoder='nvimgcodec'
#           with data.nvimgcodec_backends BACKENDS, e.g. nvimgcodec:cuda,cpu; needs the
#           [nvimgcodec] wheels); ResNet-50 of configs/image_folder.py (random-resized crops) on
#           synthetic data and fed by that pipeline ($PIPELINE_DECODERS: host or nvimgcodec[:...])
#
# Every command of the pipeline part is stopped after $CMD_TIMEOUT seconds (default 240), so that
# one that hangs (a GPU decoder in 16 worker processes) leaves time for the others.
#
# Each part writes WORK/<part>.txt and WORK/<part>/ (WORK defaults to /tmp/perf_run); after each
# part, OUT/results.tgz is rewritten with all of WORK but the profiler traces and the images.
# The exit status is 1 where a part failed (a case of compare or levers among them); the other
# parts still run.
set -u -o pipefail
status=0   # 1 once a part failed; the other parts still run
out=${1:?usage: perf_run.sh OUT [compare] [levers] [pipeline]}
shift
parts=${*:-compare levers pipeline}
work=${WORK:-/tmp/perf_run}
mkdir -p "$out" "$work"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$work/gpu.txt"
nproc >>"$work/gpu.txt"
lscpu | grep -E "^(Model name|Thread|Core|Socket)" >>"$work/gpu.txt"

pack() {
  tar czf "$out/results.tgz" -C "$work" --exclude='prof_*' --exclude='jpegs' --exclude='jpds' .
}

for part in $parts; do
  case $part in
    compare)
      python3 benchmarks/compare.py --out "$work/compare" --only "${COMPARE:-}" 2>&1 \
        | tee "$work/compare.txt" || status=1 ;;
    levers)
      python3 benchmarks/levers.py --out "$work/levers" \
        --only "${LEVERS:-rn50_base,rn50_b512}" 2>&1 | tee "$work/levers.txt" || status=1 ;;
    pipeline)
      data=$work/jpds
      if [ ! -f "$data/dataset.json" ]; then
        python3 -c "from pathlib import Path; from resnet_jax.data.benchmark import generate_jpegs; \
generate_jpegs(Path('$work/jpegs'), ${NUM_JPEGS:-2048})"
        python3 -m resnet_jax.data.prepare --image-folder "$work/jpegs" --out "$data"
      fi
      limit=(timeout -k 10 "${CMD_TIMEOUT:-240}")
      {
        for w in ${WORKERS:-15}; do
          for augment in ${AUGMENTS:-inception_crop imagenet_scale}; do
            for decode in ${DECODES:-fast exact}; do
              case $decode in
                fast) flags=(--fast-decode) ;;
                exact) flags=() ;;
                nvimgcodec) flags=(--decoder=nvimgcodec) ;;
                nvimgcodec:*) flags=(--decoder=nvimgcodec --nvimgcodec-backends="${decode#*:}") ;;
                *) echo "unknown decoding $decode" >&2; exit 2 ;;
              esac
              "${limit[@]}" python3 -m resnet_jax.data.benchmark --folder "$data" --workers "$w" \
                --batch-size 256 --warmup $((3 * w)) --steps 60 --augment "$augment" "${flags[@]}"
            done
          done
        done
        rn50=("${limit[@]}" python3 -m resnet_jax.benchmark --config=configs/image_folder.py:resnet50
              --config.data.data_dir="$data" --config.batch_size=256 --config.dtype=bfloat16)
        "${rn50[@]}" --num_classes=10 --steps 20 --windows 5
        for w in ${WORKERS:-15}; do   # buffers hold ~3 batches a worker: ~47 of the 500 steps
          for decoder in ${PIPELINE_DECODERS:-host}; do
            flags=(--config.data.decoder="${decoder%%:*}")
            [ "$decoder" != "${decoder#*:}" ] && flags+=(--config.data.nvimgcodec_backends="${decoder#*:}")
            "${rn50[@]}" --config.data.num_workers="$w" "${flags[@]}" \
              --pipeline --steps 40 --windows 5 --warmup "${PIPELINE_WARMUP:-300}"
          done
        done
      } 2>&1 | tee "$work/pipeline.txt" || status=1 ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
  pack
done
exit "$status"
