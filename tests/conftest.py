"""Test set-up: 8 simulated CPU devices, set before JAX starts."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (imported after the flags on purpose)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
    assert jax.device_count() == 8, "tests expect 8 simulated CPU devices"
    return jax.devices()
