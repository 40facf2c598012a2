"""`--mode=eval`: evaluates the latest or best checkpoint of a workdir and writes the results."""

from pathlib import Path
from typing import Any

import ml_collections

from resnet_jax.checkpoint import Checkpointer, write_json
from resnet_jax.train.loop import create_trainer


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Restores the checkpoint chosen by `config.eval.checkpoint` and evaluates it."""
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f'workdir {workdir} does not exist')
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, keep_best=config.keep_best_checkpoints,
                      best_metric=config.best_metric)
  which = config.eval.checkpoint
  if which not in ('latest', 'best'):
    raise ValueError(f"eval.checkpoint must be 'latest' or 'best', got {which!r}")
  step = ckpt.best_step() if which == 'best' else ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f'no {which} checkpoint in {ckpt.directory}')
  trainer, _, eval_input = create_trainer(config, train=False)
  state, _ = ckpt.restore(trainer.init_state(), config, step)
  ckpt.close()
  results = dict(trainer.evaluate(state, eval_input), step=step, checkpoint=which,
                 protocol=config.eval.protocol)
  write_json(workdir / f'eval_{which}_{step}.json', results)
  print(', '.join(f'{k}: {v}' for k, v in results.items()), flush=True)
  return results
