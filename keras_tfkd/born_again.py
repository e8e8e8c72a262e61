"""Born-again training: a chain of generations, each distilled from the last.

`born_again` trains generation 0 normally, then each later generation from a
frozen copy of the previous one (taken by
`keras_tfkd.callbacks.SelfTeacherSnapshot`); ``generations=1`` is Tf-KD_self.
It returns one `Generation` tuple per stage.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_tfkd import recipes
from keras_tfkd.callbacks import Generation, SelfTeacherSnapshot

__all__ = ["born_again", "Generation"]


def _fresh_compile_kwargs(compile_kwargs):
    kwargs = dict(compile_kwargs or {})
    optimizer = kwargs.get("optimizer", "rmsprop")
    if isinstance(optimizer, keras.optimizers.Optimizer):
        # An optimizer instance is bound to the variables of its first model:
        # give every generation its own, with the same configuration.
        optimizer = optimizer.__class__.from_config(optimizer.get_config())
    elif callable(optimizer) and not isinstance(optimizer, str):
        optimizer = optimizer()
    kwargs["optimizer"] = optimizer
    return kwargs


def born_again(
    build_student,
    generations=1,
    *,
    recipe_kwargs=None,
    compile_kwargs=None,
    fit_kwargs=None,
    monitor=None,
    mode="auto",
    recipe=None,
    first=None,
):
    """Tf-KD_self / born-again training: each generation distils from the last.

    Generation 0 trains ``build_student()`` normally (``first``, default
    `keras_tfkd.recipes.baseline`). Generation ``g >= 1`` trains a fresh
    ``build_student()`` with ``recipe(student, teacher_{g-1}, **recipe_kwargs)``
    (default `keras_tfkd.recipes.tfkd_self`), where ``teacher_{g-1}`` is a
    frozen copy of generation ``g-1``'s student, taken by a
    `SelfTeacherSnapshot(monitor, mode)` (the best epoch by `monitor`, or the
    last epoch). ``generations=1`` is exactly Tf-KD_self.

    Args:
        build_student: a function of no argument returning a new, built
            student (fresh weights at each call).
        generations: the number of distilled generations after generation 0.
        recipe_kwargs: keyword arguments of `recipe` (e.g. ``alpha``,
            ``temperature``, ``multiplier``).
        compile_kwargs: keyword arguments of `Distiller.compile`. An
            optimizer instance is re-created from its config for every
            generation; a callable is called once per generation.
        fit_kwargs: keyword arguments of `Distiller.fit` (``x``, ``y``,
            ``epochs``, ``validation_data``...). ``callbacks`` may be a list
            (shared by all generations) or a function ``generation -> list``.
        monitor, mode: which epoch's student becomes the next teacher.
        recipe: ``recipe(student, teacher, **recipe_kwargs) -> Distiller``.
        first: ``first(student) -> Distiller`` for generation 0.

    Returns:
        A list of ``generations + 1`` `Generation` tuples
        ``(index, distiller, history, teacher)``.

    Example:

    ```python
    runs = born_again(
        lambda: models.get_model("cnn_tiny", 10, input_shape=(8, 8, 1)),
        generations=2,
        recipe_kwargs=dict(alpha=0.95, temperature=6.0),
        compile_kwargs=dict(optimizer="adam", metrics=["accuracy"]),
        fit_kwargs=dict(x=x, y=y, epochs=10, validation_data=(x_val, y_val)),
        monitor="val_accuracy",
    )
    [max(g.history.history["val_accuracy"]) for g in runs]
    ```
    """
    if not callable(build_student):
        raise TypeError(
            "`build_student` must be a function returning a new keras.Model, got "
            f"build_student={build_student!r}."
        )
    if (
        not isinstance(generations, (int, np.integer))
        or isinstance(generations, bool)
        or generations < 0
    ):
        raise ValueError(
            f"`generations` must be an integer >= 0, got generations={generations!r}."
        )
    recipe = recipes.tfkd_self if recipe is None else recipe
    first = recipes.baseline if first is None else first
    fit_kwargs = dict(fit_kwargs or {})
    callbacks = fit_kwargs.pop("callbacks", None)

    results, teacher = [], None
    for index in range(int(generations) + 1):
        student = build_student()
        if not isinstance(student, keras.Model):
            raise TypeError(
                f"`build_student()` must return a keras.Model, got {student!r}."
            )
        if index == 0:
            distiller = first(student)
        else:
            distiller = recipe(student, teacher, **(recipe_kwargs or {}))
        distiller.compile(**_fresh_compile_kwargs(compile_kwargs))
        snap = SelfTeacherSnapshot(monitor=monitor, mode=mode)
        extra = callbacks(index) if callable(callbacks) else callbacks
        history = distiller.fit(**fit_kwargs, callbacks=[*(extra or []), snap])
        teacher = snap.teacher
        results.append(Generation(index, distiller, history, teacher))
    return results
