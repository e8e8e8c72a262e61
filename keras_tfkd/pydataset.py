"""Deprecated: the NumPy input pipeline moved to `keras_tfkd.data.pydataset`.

This module re-exports its public names and emits a `DeprecationWarning` on
import; it is removed in the next release.
"""

from keras_tfkd._deprecation import warn_moved
from keras_tfkd.data.pydataset import BatchPipeline, __all__  # noqa: F401

warn_moved(__name__, "keras_tfkd.data.pydataset")
