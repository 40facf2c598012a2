"""The model zoo: `create_model(name, **options)`, `model_names()`, `input_shape(name)`."""

from resnet_jax.models.registry import create_model, input_shape, model_names

__all__ = ['create_model', 'input_shape', 'model_names']
