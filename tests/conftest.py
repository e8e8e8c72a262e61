import atexit
import os
import shutil
import tempfile

# On JAX most of a test's time is XLA compiling the same few small models again
# (every new model traces and compiles its steps anew). One persistent
# compilation cache per test session, in a temporary folder removed at exit,
# serves this process and the Python processes the tests start (they inherit
# the environment); TensorFlow and PyTorch ignore it. Set before Keras imports
# JAX, which reads these variables once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JAX_CACHE = tempfile.mkdtemp(prefix="keras_tfkd_tests_jax_cache_")
    atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts from a clean Keras session and float32 policy."""
    keras.config.set_dtype_policy("float32")
    keras.utils.clear_session(free_memory=False)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


BACKEND = keras.backend.backend()
os.environ.setdefault("KERAS_TFKD_SMOKE", "1")

#: The session that runs the tests marked ``one_backend``: tests whose subject
#: does not depend on the backend (the study's statistics and reports, the
#: command line's parsing and messages, the tuning protocol, the registry, the
#: import graph), which the other tests already train on every backend. They
#: run once, in the shortest session, instead of three times. Set
#: ``KERAS_TFKD_ONE_BACKEND`` to run them elsewhere (``all``: every session).
ONE_BACKEND = os.environ.get("KERAS_TFKD_ONE_BACKEND", "torch")


def pytest_collection_modifyitems(config, items):
    if ONE_BACKEND in (BACKEND, "all"):
        return
    keep = [item for item in items if item.get_closest_marker("one_backend") is None]
    if len(keep) < len(items):
        kept = {id(item) for item in keep}
        config.hook.pytest_deselected(items=[i for i in items if id(i) not in kept])
        items[:] = keep
