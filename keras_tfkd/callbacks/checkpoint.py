"""`StudentCheckpoint`: `ModelCheckpoint` that saves the Distiller's student."""

from __future__ import annotations

import keras

__all__ = ["StudentCheckpoint"]


class _StudentView:
    """The Distiller as `ModelCheckpoint` sees it, with saving redirected.

    Everything (metrics for ``mode="auto"``, JAX state sync before saving)
    goes to the Distiller; only `save` and `save_weights` act on the student.
    """

    def __init__(self, distiller):
        self._distiller = distiller

    def __getattr__(self, name):
        if name == "_distiller":  # not set yet (e.g. during copy): no recursion
            raise AttributeError(name)
        return getattr(self._distiller, name)

    def save(self, filepath, *args, **kwargs):
        return self._distiller.student.save(filepath, *args, **kwargs)

    def save_weights(self, filepath, *args, **kwargs):
        return self._distiller.student.save_weights(filepath, *args, **kwargs)


class StudentCheckpoint(keras.callbacks.ModelCheckpoint):
    """`keras.callbacks.ModelCheckpoint` that saves the Distiller's student alone.

    Same arguments and behaviour as `ModelCheckpoint` (``monitor`` reads the
    Distiller's logs, e.g. ``"val_accuracy"`` of the student); the file holds
    the student only: a ``.keras`` model that `keras.saving.load_model` opens
    without keras_tfkd or the teacher, or ``.weights.h5`` weights that
    ``student.load_weights`` reads. On a plain model it is `ModelCheckpoint`.

    Example:

    ```python
    best = StudentCheckpoint("best_student.keras", monitor="val_accuracy",
                             save_best_only=True)
    distiller.fit(x, y, validation_data=(x_val, y_val), callbacks=[best])
    student = keras.saving.load_model("best_student.keras")
    ```
    """

    def set_model(self, model):
        if isinstance(getattr(model, "student", None), keras.Model):
            model = _StudentView(model)
        super().set_model(model)
