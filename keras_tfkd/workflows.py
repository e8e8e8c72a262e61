"""Deprecated (0.1.0): moved to `keras_tfkd.runs`; this alias goes in the next release.

``from keras_tfkd import workflows`` still gives every public name of 0.1.0
(`train`, `TrainConfig`, `ResultsStore`, `planned_key`, ...), from
`keras_tfkd.runs`, with a `DeprecationWarning`.
"""

from keras_tfkd._deprecation import warn_moved
from keras_tfkd.runs import *  # noqa: F403
from keras_tfkd.runs import __all__  # noqa: F401

warn_moved("keras_tfkd.workflows", "keras_tfkd.runs")
