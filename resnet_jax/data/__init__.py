"""Input pipelines: tfds data sources, idx files, prepared image folders and fake data, read with
grain (or kept on the devices), as global batches sharded over the mesh. See docs/architecture.md.

    create_input(config, mesh, train=True) -> TrainInput   # infinite; get_state / set_state
    create_input(config, mesh, train=False) -> EvalInput   # one padded pass per iteration
    device_ops.prepare_images(images_u8, rng, train=..., data_config=..., dtype=...)
"""

from resnet_jax.data.create import create_input
from resnet_jax.data.inputs import EvalInput, Input, TrainInput
from resnet_jax.data.splits import DatasetInfo

__all__ = ['create_input', 'DatasetInfo', 'EvalInput', 'Input', 'TrainInput']
