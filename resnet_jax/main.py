"""Entry point: `python -m resnet_jax.main --config=configs/imagenet.py --workdir=DIR`.

--config takes a config file, an optional variant (`configs/imagenet.py:resnet34`) and field
overrides (`--config.optimizer.lr=0.2`); an unknown field is an error. The same command on the
same workdir resumes from the latest checkpoint.
"""

import sys

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

from resnet_jax import parallel
from resnet_jax.config_base import parse_flags
from resnet_jax.progress import own_info_logs_only

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, logs, plots.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resumes if the workdir has a checkpoint) or eval.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'host:port of process 0, for multi-process runs outside '
    'TPU pods and SLURM (or JAX_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Process count (or JAX_NUM_PROCESSES).')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'This process (or JAX_PROCESS_ID).')
_DETECT = flags.DEFINE_bool(
    'distributed', False, 'Join a multi-process job whose cluster JAX detects itself (Cloud TPU '
    'VM slices: launch/tpu_pod.sh passes it; SLURM and GKE are detected without it).')
_INIT_TIMEOUT = flags.DEFINE_integer('distributed_timeout', 300,
                                     'Seconds to wait for the coordinator.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = _CONFIG.value
  if not isinstance(config, ml_collections.ConfigDict):
    config.to_dict()   # a config file that failed to load raises its error on first use
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                  _INIT_TIMEOUT.value, detect=_DETECT.value)
  # Imported after distributed start-up (nothing may touch the devices before it), and only the
  # mode's own modules: imports are part of a short run's wall time.
  if _MODE.value == 'train':
    from resnet_jax.train import loop
    loop.train_and_evaluate(config, _WORKDIR.value)
  else:
    from resnet_jax import evaluate
    evaluate.evaluate_workdir(config, _WORKDIR.value)
  return 0


def run() -> None:
  own_info_logs_only()
  try:
    app.run(main, flags_parser=parse_flags)
  except (ValueError, OSError, FloatingPointError) as e:  # bad input, files, NaN: no traceback
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    parallel.exit_after_error(1)


if __name__ == '__main__':
  run()
