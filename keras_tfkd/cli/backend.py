"""The Keras backend, chosen and checked before Keras is imported.

``--backend`` (else ``$KERAS_BACKEND``, else ``~/.keras/keras.json``, else
TensorFlow) is checked with `importlib.util.find_spec`, set as
``KERAS_BACKEND`` and only then is Keras imported; each failure is a
`_UsageError` naming the ``pip install`` that fixes it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys

from keras_tfkd.cli.errors import _UsageError

BACKENDS = ("tensorflow", "jax", "torch")
#: The modules each backend needs (checked before Keras is imported) and the
#: name of the framework in messages; the pip extra is the backend's name.
BACKEND_MODULES = {
    "tensorflow": ("tensorflow",),
    "jax": ("jax", "jaxlib"),
    "torch": ("torch",),
}
_FRAMEWORKS = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
# TensorFlow's C++ start-up chatter (oneDNN, CPU features, and the "failed
# call to cuInit" ERROR line of a CUDA build on a machine without a GPU)
# drowns the progress lines: 3 hides ERROR too. Users can still set their own.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _installed(module):
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent is missing, or a hiding finder
        return False


def _keras_config_backend():
    """``(backend, path)`` of the keras.json Keras will read (backend may be None).

    The same place Keras looks: ``$KERAS_HOME/keras.json``, else
    ``~/.keras/keras.json`` (``/tmp/.keras`` when the home is read-only).
    """
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        if not os.access(base, os.W_OK):
            base = "/tmp"
        home = os.path.join(base, ".keras")
    path = os.path.expanduser(os.path.join(home, "keras.json"))
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None, path
    backend = config.get("backend") if isinstance(config, dict) else None
    return (backend if isinstance(backend, str) and backend else None), path


def _requested_backend(flag):
    """``(name, where it was chosen)`` of the backend Keras will load."""
    if flag:
        return flag, f"--backend {flag}"
    env = os.environ.get("KERAS_BACKEND")
    if env:
        return env, f"KERAS_BACKEND={env}"
    name, path = _keras_config_backend()
    if name:
        return name, f'{path} ("backend": "{name}")'
    return "tensorflow", "Keras's default backend (KERAS_BACKEND is not set)"


def check_backend(flag=None, *, has_flag=True):
    """Raise a one- or two-line error unless the chosen backend is installed.

    The backend is the one Keras will load: `flag` (``--backend``), else
    ``$KERAS_BACKEND``, else keras.json, else TensorFlow. Checked with
    `importlib.util.find_spec` before Keras is imported (Keras itself raises
    at import time on an unknown backend); nothing is imported. Does nothing
    once Keras is imported (`_select_backend` handles that case). With
    ``has_flag=False`` (``keras-tfkd list``) the fix names only
    ``KERAS_BACKEND``.
    """
    if "keras" in sys.modules:
        return
    name, where = _requested_backend(flag)
    usable = [b for b in BACKENDS if all(map(_installed, BACKEND_MODULES[b]))]
    others = [b for b in usable if b != name]
    option = "--backend " if has_flag else "KERAS_BACKEND="
    alternative = f" (or use {option}{others[0]})" if others else ""
    if name not in BACKENDS:
        installed = f" (installed here: {', '.join(usable)})" if usable else ""
        flag_too = ", or pass --backend" if has_flag else ""
        raise _UsageError(
            f"{where}: {name!r} is not a backend keras-tfkd runs on.\n"
            f"Set KERAS_BACKEND to tensorflow, jax or torch{installed}{flag_too}.",
            status=1,
        )
    if not _installed("keras"):
        raise _UsageError(
            "Keras is not installed.\nInstall it with: pip install "
            f'"keras-tfkd[{name}]"',
            status=1,
        )
    missing = [m for m in BACKEND_MODULES[name] if not _installed(m)]
    if missing:
        raise _UsageError(
            f"{where}: {_FRAMEWORKS[name]} is not installed (no module "
            f"{missing[0]!r}).\nInstall it with: pip install "
            f'"keras-tfkd[{name}]"{alternative}',
            status=1,
        )


def _import_keras(flag):
    """Import Keras on the chosen backend; a failure is one line, no traceback."""
    if "keras" in sys.modules:
        return
    name, where = _requested_backend(flag)
    try:
        import keras  # noqa: F401
    except (ImportError, ValueError) as e:  # a broken install, a bad keras.json
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        if isinstance(e, ImportError):
            fix = (
                f'Reinstall it with: pip install --force-reinstall "keras-tfkd[{name}]"'
            )
        else:
            fix = f"Check the Keras settings in {_keras_config_backend()[1]}."
        raise _UsageError(
            f"{where}: importing Keras on the {name} backend failed "
            f"({type(e).__name__}: {reason}).\n{fix}",
            status=1,
        ) from None


@contextlib.contextmanager
def _quiet_tensorflow():
    """Hide TensorFlow's Python warnings (tf.function retracing) below ERROR.

    TensorFlow logs them to the ``tensorflow`` logger (``tf.get_logger()``),
    which it never sets a level on outside interactive shells: setting it by
    name works before TensorFlow is imported, and imports nothing (TF is also
    imported on the other backends, for tf.data). A level set by the user is
    kept, and the previous level comes back on exit (``main([...])`` called
    in-process leaves the caller's logging as it was).
    """
    logger = logging.getLogger("tensorflow")
    before = logger.level
    if before == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        if logger.level == logging.ERROR and before == logging.NOTSET:
            logger.setLevel(before)


def _select_backend(name):
    """Set KERAS_BACKEND before Keras is imported; refuse a Keras already on another.

    The command imports Keras only after its arguments are parsed (the
    package itself imports nothing heavy), so this always runs first when
    ``keras-tfkd`` is the program; called in-process (``main([...])``) after
    Keras was imported on another backend, it is an error.
    """
    if name is None:
        return
    keras = sys.modules.get("keras")
    current = None
    if keras is not None:
        try:
            current = keras.backend.backend()
        except AttributeError:  # a partially imported keras
            current = None
    if current is None or current == name:
        os.environ["KERAS_BACKEND"] = name
        return
    raise _UsageError(
        f"--backend {name}: Keras is already imported with the {current!r} "
        f"backend in this process; start a new process with KERAS_BACKEND={name}."
    )
