"""`compare`: the study's protocol on your model and your data.

The question a practitioner brings is "which of these helps *my* model on
*my* data". `compare` answers it with the same machinery as ``keras-tfkd
study``: every method on the same seeds, initial weights and batches as its
baseline, the epoch chosen on a validation split, the test accuracy and
calibration at that epoch, and the paired claims table, written to the same
results.json, results.md and results.png; rerun into the same folder, it
skips the finished runs and resumes an interrupted one.
"""

from __future__ import annotations

from keras_tfkd.study.config import TEACHER_FREE_METHODS, StudyConfig

__all__ = ["compare", "model_name"]


def model_name(function):
    """The name a study gives a model function: ``module:qualified_name``.

    >>> def build_student(): ...
    >>> model_name(build_student)
    'keras_tfkd.study.compare:build_student'
    """
    if not callable(function):
        raise TypeError(
            "A model must be a function that builds a keras.Model (or a model "
            f"name), got {type(function).__name__}."
        )
    module = getattr(function, "__module__", None) or "builder"
    qualname = getattr(function, "__qualname__", None) or type(function).__name__
    for char in "<>":
        qualname = qualname.replace(char, "")
    return f"{module}:{qualname}"


def _model(value, argument):
    from keras_tfkd import runs

    if value is None or isinstance(value, str):
        if value is not None:
            runs.check_model_name(value, argument)
        return value
    return runs.register_model(model_name(value), value)


def compare(
    student,
    train=None,
    test=None,
    validation=None,
    *,
    teacher=None,
    dataset=None,
    methods=None,
    seeds=(0, 1, 2, 3, 4),
    epochs=12,
    batch_size=64,
    learning_rate=1e-2,
    augment=None,
    validation_fraction=0.1,
    kl="batchmean",
    output_dir="runs/compare",
    name="arrays",
    plot=True,
    tune=0,
    tune_seed=100,
    log=print,
):
    """Which methods help your model on your data: the study's protocol.

    Each method trains a fresh `student` per seed, paired with the baseline
    (same seed, initial weights and batches); each run's epoch is chosen by
    validation accuracy and its test accuracy and calibration (NLL, ECE,
    Brier) there are the headline. results.md gets the table and, for every
    method, the mean paired difference ``d = acc(method) - acc(baseline)``
    over seeds with its 95% Student t interval
    ``mean(d) ± t_{0.975, n-1} * std(d) / sqrt(n)`` and a verdict
    (supported if the interval is above 0, not supported if below, else
    inconclusive).

    Args:
        student: a function returning a fresh logits `keras.Model` (no
            softmax), called with no argument or with ``num_classes`` and/or
            ``input_shape`` by keyword; or a `keras_tfkd.models` name.
        train, test: ``(x, y)`` arrays, ``y`` integer class ids (see
            `keras_tfkd.data.from_arrays`: ``x`` reaches the model as given).
        validation: ``(x, y)`` to choose each run's epoch on; None holds out
            `validation_fraction` of `train` (stratified, seed 0); with 0 as
            well, the final epoch is the headline.
        teacher: a stronger model (a function or a name) for KD, Re-KD,
            De-KD and DKD. Without one, the methods default to the
            teacher-free ones (`TEACHER_FREE_METHODS`).
        dataset: instead of the arrays, a `keras_tfkd.data.Dataset`, a data
            set name or a ``.npz`` path (`keras_tfkd.data.load`).
        methods, seeds, epochs, batch_size, learning_rate, augment,
            validation_fraction, kl, output_dir, plot: as in `StudyConfig`
            (Adam at `learning_rate`, cosine decay to 0; `augment` None
            means none for arrays).
        name: the data's name in keys, folders and tables.
        tune: 0, or N: first choose each method's setting among N trials
            of its search space (`keras_tfkd.search_spaces`; trial 1 is the
            untuned setting) by the validation accuracy of one run on
            `tune_seed`, then run the chosen setting on every seed; the
            baseline is tuned first, over `learning_rate` with the same
            budget, and every later run trains at the rate it chose
            (`keras_tfkd.study.tune`). Needs a validation split.
        tune_seed: the seed of the tuning runs.
        log: called with each progress line.

    Returns:
        The summary of `run_study`: ``records``, ``rows``, ``table``,
        ``seconds``, ``paths`` and ``tuning`` (None, or each tuned
        method's trials and chosen values).

    Example:

    ```python
    import keras, numpy as np, keras_tfkd
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20)).astype("float32")
    y = (x[:, :3].sum(axis=1) > 0).astype("int32") + 2 * (x[:, 3] > 0)

    def build_student(num_classes, input_shape):
        return keras.Sequential([keras.Input(input_shape),
                                 keras.layers.Dense(64, activation="relu"),
                                 keras.layers.Dense(num_classes)])

    summary = keras_tfkd.compare(build_student, train=(x[:500], y[:500]),
                                 test=(x[500:], y[500:]),
                                 methods=["baseline", "lsr", "tfkd_reg"],
                                 seeds=[0, 1], epochs=3,
                                 output_dir="runs/compare_demo")
    print(summary["table"])
    ```
    """
    from keras_tfkd import data
    from keras_tfkd.study.run import run_study

    student_name = _model(student, "student")
    teacher_name = _model(teacher, "teacher")
    if dataset is None:
        if train is None or test is None:
            raise TypeError(
                "compare needs the data: train=(x, y) and test=(x, y) (and "
                "optionally validation=(x, y)), or dataset=..."
            )
        dataset = data.from_arrays(train, test, validation, name=name)
    elif train is not None or test is not None or validation is not None:
        raise TypeError("Give either dataset= or train=/test=/validation=, not both.")
    elif not isinstance(dataset, data.Dataset):
        dataset = data.load(dataset)
    if methods is None:
        methods = TEACHER_FREE_METHODS if teacher_name is None else None
    settings = dict(
        output_dir=str(output_dir),
        dataset=dataset.name,
        epochs=epochs,
        seeds=tuple(seeds),
        student=student_name,
        teacher=teacher_name,
        batch_size=batch_size,
        learning_rate=learning_rate,
        augment=augment,
        validation_fraction=validation_fraction,
        kl=kl,
        plot=plot,
        tune=tune,
        tune_seed=tune_seed,
    )
    if methods is not None:
        settings["methods"] = tuple(methods)
    if dataset.validation is not None:
        settings["validation_fraction"] = 0.0
    config = StudyConfig(**settings)
    return run_study(config, log=log, dataset=dataset)
