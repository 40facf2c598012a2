#!/usr/bin/env bash
# The Fashion-MNIST runs of docs/results.md, on one GPU, in one call:
#
#   benchmarks/fashion_mnist_runs.sh OUT [DATA_DIR] [fast|best|degradation|shortcuts|budget|tta|responses ...]
#
# fast: the fast variant (configs/fashion_mnist.py:resnet20,fast), one run at a time (each alone
#   on the GPU, timed with /usr/bin/time): fast_eE[_overrides]_cold (see FAST_RUNS below)
#   compiles into an empty JAX compilation cache and fast_eE[_overrides]_warm reruns it from
#   that cache. ONLY_RUNS picks runs by name.
# best, degradation, shortcuts, budget: the accuracy runs, the two paper sweeps ($SWEEP_EPOCHS
# epochs, default 30) and the depth-vs-width sweep at 1.7M parameters
# (configs/ablations/budget_fashion_mnist.py, $BUDGET_EPOCHS, default the recipe's 120), $JOBS
# processes sharing the GPU at once (timings of these are not reported).
# responses: after the runs, the std of the layer responses (the paper's Fig. 7) of the
#   degradation runs (resnet_jax.analysis.responses; OUT/responses/).
# tta: each best run's final checkpoint evaluated again with test-time augmentation
#   (--mode=eval): eval.protocol=ten_crop, which on 28x28 images without eval_resize averages
#   each image and its mirror image, and padded_ten_crop (the image and four copies shifted by
#   data.pad pixels, as training's pad-crop, and their mirror images).
# Every run's log lands in OUT; `results.txt` lists final test accuracies.
set -u
out=${1:?usage: fashion_mnist_runs.sh OUT [DATA_DIR] [fast|best|degradation|shortcuts|budget|tta|responses ...]}
data=${2:-/usr/share/datasets/fashion-mnist}
shift 2 || shift $#
parts=${*:-fast best degradation shortcuts}
mkdir -p "$out"
main=(python3 -m resnet_jax.main --config=configs/fashion_mnist.py "--config.data.data_dir=$data")
# The best runs: model:width[:epochs[:overrides]] (epochs default $BEST_EPOCHS), each the
# variant `configs/fashion_mnist.py:MODEL,best` (the recipe of resnet_jax/recipes.py:
# best_recipe, EMA included) with that width and its overrides, comma-separated config keys,
# e.g. resnet20:40:50:optimizer.sam_rho=0.05,optimizer.ema_decay=0.9995; the workdir name ends
# with them (best_resnet20_w40_e50_sam_rho0.05_ema_decay0.9995). Before 2026-12-04 the same
# settings were passed as flags, without the EMA. Distillation: a teacher entry, then its student
# with distill.teacher=OUT/<the teacher's workdir name>, run in that order with JOBS=1.
best_models=${BEST_MODELS:-"resnet20:40"}

override_flags() {   # comma-separated overrides key=value,... -> --config.key=value ...
  local kv
  for kv in ${1//,/ }; do echo -n " --config.$kv"; done
}

override_tag() {   # the same overrides -> a workdir-name suffix: a.b=v -> _bv (a path: its name)
  local kv key
  for kv in ${1//,/ }; do key=${kv%%=*}; echo -n "_${key##*.}$(basename "${kv#*=}")"; done
}

best_args() {   # one BEST_MODELS entry -> the workdir and flags of that best run
  local model width epochs overrides
  IFS=: read -r model width epochs overrides <<<"$1"
  epochs=${epochs:-${BEST_EPOCHS:-120}}
  echo "--workdir=$out/best_${model}_w${width}_e${epochs}$(override_tag "$overrides")" \
    "--config.model.width=$width --config.num_epochs=$epochs$(override_flags "$overrides")"
}

timed() {   # name, args...: one run of the fast variant alone, with its process wall time
  local name=$1; shift
  [ -n "${ONLY_RUNS:-}" ] && [[ " $ONLY_RUNS " != *" $name "* ]] && return
  /usr/bin/time -f "$name: process wall %e s" -a -o "$out/walls.txt" \
    "${main[@]/fashion_mnist.py/fashion_mnist.py:resnet20,fast}" --workdir="$out/$name" "$@" \
    >"$out/$name.log" 2>&1
}

sweep_commands() {   # sweep config: its per-point commands, with this data dir and python3
  python3 -m resnet_jax.sweep --config="$1" --workdir="$out/$(basename "${1%%.py*}")" \
    --print-commands --set=data.data_dir="$data" --set=checkpoint_every_steps=1000000 \
    --set=num_epochs="${SWEEP_EPOCHS:-30}" \
    | sed 's/^python /python3 /'
}

tta=0
responses=0
jobs_file=$out/parallel_jobs.txt
: >"$jobs_file"
for part in $parts; do
  case $part in
    fast)
      # Cold and warm runs of the fast variant (configs/fashion_mnist.py:resnet20,fast), one at a
      # time: FAST_RUNS entries epochs[:overrides] (comma-separated config keys, as in BEST_MODELS).
      # Each compiles into its own empty JAX compilation cache, then reruns from it. "Cold" means
      # that cache is empty, not that the machine is fresh: a first process loads the CUDA
      # libraries and builds matplotlib's font cache before any timed run.
      python3 -c "import jax, matplotlib.pyplot; from resnet_jax.train import loop; jax.devices()" \
        >"$out/prime.log" 2>&1
      for spec in ${FAST_RUNS:-30 30:xla_deterministic=False}; do
        IFS=: read -r epochs overrides <<<"$spec"
        tag=$(override_tag "$overrides")
        for cache in cold warm; do
          # shellcheck disable=SC2046  # the flags split into words (no spaces in a value)
          JAX_COMPILATION_CACHE_DIR=$out/jax_cache_e$epochs$tag JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
            timed "fast_e${epochs}${tag}_$cache" --config.num_epochs="$epochs" $(override_flags "$overrides")
        done
      done ;;
    best)
      for spec in $best_models; do
        echo "${main[*]/fashion_mnist.py/fashion_mnist.py:${spec%%:*},best} $(best_args "$spec")" >>"$jobs_file"
      done ;;
    tta) tta=1 ;;   # after the parallel jobs, which may train the runs it evaluates
    responses) responses=1 ;;   # likewise
    degradation)   # the 56-layer points first: they take longest
      points=$(sweep_commands configs/ablations/degradation.py:fashion_mnist)
      grep -E 'cifar_(plain|resnet)56' <<<"$points" >>"$jobs_file"
      grep -E 'cifar_(plain|resnet)20' <<<"$points" >>"$jobs_file" ;;
    shortcuts)
      sweep_commands configs/ablations/shortcuts_cifar.py:fashion_mnist | grep -E 'shortcut=(B|C)' >>"$jobs_file" ;;
    budget)   # the deepest points first: they take longest
      SWEEP_EPOCHS=${BUDGET_EPOCHS:-120} sweep_commands configs/ablations/budget_fashion_mnist.py \
        | tac >>"$jobs_file" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
run_job() {   # one command line; its log goes next to its workdir
  local workdir=${1##*--workdir=}
  mkdir -p "$(dirname "${workdir%% *}")"
  timeout "${JOB_TIMEOUT:-480}" bash -c "$1" >"${workdir%% *}.log" 2>&1
}
if [ -s "$jobs_file" ]; then   # several runs share the GPU; each keeps a small memory pool
  export -f run_job
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.12 xargs -P "${JOBS:-5}" -d '\n' -I{} bash -c 'run_job "$1"' _ {} \
    <"$jobs_file"
fi
if [ "$tta" = 1 ]; then
  for spec in $best_models; do
    for protocol in ten_crop padded_ten_crop; do
      "${main[@]/fashion_mnist.py/fashion_mnist.py:${spec%%:*},best}" --mode=eval \
        --config.eval.protocol=$protocol $(best_args "$spec") \
        >"$out/tta_${protocol}_${spec//[:,=]/_}.log" 2>&1
    done
  done
fi
if [ "$responses" = 1 ]; then
  python3 -m resnet_jax.analysis.responses "$out"/degradation/name-* --out="$out/responses" \
    >"$out/responses.log" 2>&1
fi
for summary in "$out"/*/summary.json "$out"/*/*/summary.json; do
  [ -f "$summary" ] && python3 -c "import json,sys; s=json.load(open(sys.argv[1])); \
print(sys.argv[1], 'final', s['final'], 'wall_time_s', round(s['wall_time_s'], 1))" "$summary"
done | tee "$out/results.txt"
cat "$out/walls.txt" 2>/dev/null
grep -h "^protocol" "$out"/tta_*.log 2>/dev/null || true   # no tta part: not a failure
