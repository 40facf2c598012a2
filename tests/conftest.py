"""Test set-up: 8 simulated CPU devices, set before JAX starts; a compilation cache.

Many tests train the same tiny configs again (resume, restore, mismatch); JAX's persistent
compilation cache lets the second and later runs skip XLA's compile, which dominates them on CPU.
The cache lives in a temporary directory of this test session (each pytest-xdist worker its own);
the variables reach the subprocesses that tests start too.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax_cache_")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"

import jax  # noqa: E402  (imported after the flags on purpose)
import pytest  # noqa: E402

assert jax.config.jax_compilation_cache_dir == os.environ["JAX_COMPILATION_CACHE_DIR"]


@pytest.fixture(scope="session")
def devices():
    assert jax.device_count() == 8, "tests expect 8 simulated CPU devices"
    return jax.devices()
