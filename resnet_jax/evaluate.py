"""`--mode=eval`: evaluates the latest or best checkpoint of a workdir with `config.eval.protocol`.

Writes `eval_<protocol>_<checkpoint>_<step>.json` (loss, top-1, top-5, per-class accuracy,
confusion matrix counts) and `plots/confusion_<protocol>_<checkpoint>_<step>.png` into the
workdir, so that the protocols' results of one checkpoint stand side by side; `<protocol>` also
names the settings that change its views (`multi_scale-224-256-384`, `padded_ten_crop-pad4`).
Protocols: see `resnet_jax.eval_protocols`.
"""

from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from resnet_jax import eval_protocols, parallel, plots, runtime
from resnet_jax.checkpoint import Checkpointer, check_shared_directory, write_json
from resnet_jax.config_base import print_config_changes
from resnet_jax.progress import format_metric
from resnet_jax.train.restore import restore_eval_variables
from resnet_jax.train.trainer import create_trainer

_LABELLED_CLASSES = 30   # more classes: no tick labels
_ANNOTATED_CLASSES = 12  # up to this many: counts written in the cells


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Restores the checkpoint chosen by `config.eval.checkpoint` and evaluates it."""
  runtime.configure(config)
  protocol = eval_protocols.Protocol.from_config(config)   # a bad one fails before any work
  workdir = Path(workdir)
  if missing := parallel.processes_without(workdir.is_dir()):   # every process fails together
    raise FileNotFoundError(f'workdir {workdir} does not exist'
                            + (f' for process(es) {missing}' if jax.process_count() > 1 else ''))
  check_shared_directory(workdir)
  if jax.process_index() == 0:   # the data and model are built from `config`, not the run's
    print_config_changes(workdir / 'config.json', config, 'evaluating')
  which = config.eval.checkpoint
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, keep_best=config.keep_best_checkpoints,
                      best_metric=config.best_metric, create=False)
  step = ckpt.chosen_step(which)
  trainer, _, base_input = create_trainer(config, train=False)
  try:
    variables = restore_eval_variables(ckpt, trainer.abstract_state, config, step)
  finally:
    ckpt.close()
  eval_input = eval_protocols.protocol_input(config, trainer.mesh, base_input)
  eval_step = eval_protocols.compile_step(trainer.model, config, trainer.mesh)
  sums = eval_protocols.evaluate_views(eval_step, variables, eval_input)
  results = dict(eval_protocols.summarize(sums, eval_input.info.class_names), step=step,
                 checkpoint=which, protocol=config.eval.protocol)
  if config.eval.protocol == 'multi_scale':
    results['scales'] = list(protocol.scales)
  if config.eval.protocol == 'padded_ten_crop':
    results['pad'] = config.data.pad
  write_json(result_path(workdir, config, which, step), results)
  if jax.process_index() == 0:
    plots.save(confusion_figure(results),
               workdir / 'plots' / f'confusion_{result_name(config, which, step)}.png')
  shown = [f'{k}: {results[k]}' for k in ('protocol', 'checkpoint', 'step', 'num_examples')]
  shown += [f'{k}: {format_metric(k, results[k])}' for k in ('eval/loss', 'eval/top1', 'eval/top5')]
  print(', '.join(shown), flush=True)
  return results


def eval_tag(config: ml_collections.ConfigDict) -> str:
  """`config.eval.protocol` with the settings that change its views: 'ten_crop',
  'multi_scale-224-256-384', 'padded_ten_crop-pad4'."""
  protocol = eval_protocols.Protocol.from_config(config)
  if protocol.protocol == 'multi_scale':
    return '-'.join(map(str, (protocol.protocol, *protocol.scales)))
  if protocol.protocol == 'padded_ten_crop':
    return f'{protocol.protocol}-pad{protocol.pad}'
  return protocol.protocol


def result_name(config: ml_collections.ConfigDict, which: str, step: int) -> str:
  """Names the results of `config`'s protocol on the `which` checkpoint at `step`."""
  return f'{eval_tag(config)}_{which}_{step}'


def result_path(workdir: str | Path, config: ml_collections.ConfigDict, which: str,
                step: int) -> Path:
  """Where `evaluate_workdir` writes those results."""
  return Path(workdir) / f'eval_{result_name(config, which, step)}.json'


def confusion_figure(results: dict[str, Any]) -> Figure:
  """The confusion matrix, each row (true class) as fractions of its examples."""
  counts = np.asarray(results['confusion_matrix'], float)
  names = results['class_names']
  fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  side = min(4 + 0.4 * len(names), 14)
  fig = Figure(figsize=(side + 1, side), layout='constrained')
  ax = fig.add_subplot()
  image = ax.imshow(fractions, cmap='Blues', vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, label='fraction of the true class')
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  ax.set_title(f"{results['protocol']}, step {results['step']}: top-1 "
               f"{100 * results['eval/top1']:.2f}%")
  if len(names) <= _LABELLED_CLASSES:
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=90)
    ax.set_yticks(ticks, names)
  if len(names) <= _ANNOTATED_CLASSES:
    for (i, j), n in np.ndenumerate(counts.astype(int)):
      ax.text(j, i, str(n), ha='center', va='center', fontsize=8,
              color='white' if fractions[i, j] > 0.5 else 'black')
  return fig

