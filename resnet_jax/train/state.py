"""The train state: everything a step reads and writes, and nothing else."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Params, BN statistics, optimizer state, step and RNG; if asked for, an exponential moving
  average of the params and of the BN statistics (both: the averaged weights evaluated with the
  live weights' statistics lost 2 to 6 points of Fashion-MNIST accuracy).

  The model and the optimizer are not part of the state: they are static arguments of the jitted
  steps, so the state is a plain pytree of arrays that orbax saves as it is.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None
  ema_batch_stats: Any = None


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...], *, ema: bool) -> TrainState:
  """Initialises the model on a dummy batch of one image. Pure: jit it for sharded outputs."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      rng=state_rng,
      ema_params=params if ema else None,
      ema_batch_stats=batch_stats if ema else None,
  )


def live_variables(state: TrainState) -> dict[str, Any]:
  """The model variables being trained (not averaged)."""
  return {'params': state.params, 'batch_stats': state.batch_stats}


def eval_fields(state: TrainState) -> dict[str, str]:
  """The fields of `state` that evaluation uses (the EMA ones when there is an EMA), by the
  variable collection each is."""
  if state.ema_params is None:
    return {'params': 'params', 'batch_stats': 'batch_stats'}
  return {'params': 'ema_params', 'batch_stats': 'ema_batch_stats'}


def eval_variables(state: TrainState) -> dict[str, Any]:
  """The model variables that evaluation uses: the EMA ones when there is an EMA."""
  return {name: getattr(state, field) for name, field in eval_fields(state).items()}
