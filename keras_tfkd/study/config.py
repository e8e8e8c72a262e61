"""What a study runs: `StudyConfig`, its runs in order (`plan`), the De-KD teacher.

`STUDY_SOURCES` names the registry row whose published hyper-parameters each
method takes; `dekd_teacher_plan` says how the De-KD teacher is trained
against the KD teacher (after ``dekd_teacher_epochs`` epochs, or, in a
one-epoch study, on part of the epoch).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_tfkd import data as data_lib
from keras_tfkd import experiments as experiments_lib
from keras_tfkd.study import lm_config

#: The registry row whose published hyper-parameters each method uses.
STUDY_SOURCES = {
    "baseline": "baseline/mobilenet_v2",
    "lsr": "lsr/mobilenet_v2",
    "kd": "kd/mobilenet_v2_from_resnet18",
    "rekd": "rekd/resnet18_from_mobilenet_v2",
    "dekd": "dekd/mobilenet_v2_from_resnet18",
    "tfkd_self": "tfkd_self/mobilenet_v2_from_mobilenet_v2",
    "tfkd_reg": "tfkd_reg/mobilenet_v2",
    "pskd": "pskd/mobilenet_v2",
    "cskd": "cskd/mobilenet_v2",
    "ols": "ols/mobilenet_v2",
    "dkd": "dkd/mobilenet_v2_from_resnet18",
}

METHOD_LABELS = {
    "baseline": "Baseline",
    "lsr": "LSR",
    "kd": "KD",
    "rekd": "Re-KD",
    "dekd": "De-KD",
    "tfkd_self": "Tf-KD_self",
    "tfkd_reg": "Tf-KD_reg",
    "pskd": "PS-KD",
    "cskd": "CS-KD",
    "ols": "OLS",
    "dkd": "DKD",
}


#: The methods that need a second, stronger model (the teacher).
TEACHER_METHODS = ("kd", "rekd", "dekd", "dkd")

#: The methods that need no model but the student: what `keras_tfkd.compare`
#: runs when it is given no teacher.
TEACHER_FREE_METHODS = tuple(
    m for m in experiments_lib.METHODS if m not in TEACHER_METHODS
)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What `run_study` runs (the defaults are those of ``keras-tfkd study``).

    Args:
        output_dir: folder of results.json, results.md, results.png and the
            cached checkpoints.
        dataset: a `keras_tfkd.data` name (``digits`` needs no download).
        epochs: epochs of every run (the De-KD teacher stops after
            `dekd_teacher_epochs`).
        seeds: one run of every method per seed (default 0-4: with 3 seeds
            the 95% interval of a paired difference is wide enough on digits
            that almost every claim is inconclusive; 5 cost about 5 minutes
            on 2 CPU cores).
        methods: a subset of `experiments.METHODS`.
        student / teacher: the weak and the strong model (Re-KD swaps them):
            model names of `keras_tfkd.runs.model_names` (your own functions
            once `runs.register_model` names them). The teacher may be None
            when no method of `TEACHER_METHODS` runs.
        batch_size, learning_rate: batch size and Adam's initial learning
            rate (decayed to 0 along a cosine over `epochs`).
        dekd_teacher_epochs: epochs of normal training of the De-KD teacher
            (the checkpoint after that many epochs of its `epochs`-epoch run,
            where KD takes the best checkpoint of the whole run). It must be
            less than `epochs`: a De-KD teacher trained as long as the KD
            teacher *is* the KD teacher, and De-KD would silently equal KD
            (`ValueError` otherwise). The one exception is a one-epoch study
            with ``dekd_teacher_epochs=1`` (the default): there the De-KD
            teacher is trained for the first `dekd_teacher_fraction` of that
            epoch.
        dekd_teacher_fraction: the part of the single epoch the De-KD teacher
            sees when ``epochs == 1``, ``1/S`` for an integer ``S >= 2``
            (default 1/4). It is trained on a random ``1/S`` of the training
            set (drawn with the seed) for one epoch of an ``S``-epoch cosine
            schedule: the same number of steps, at the same learning rates,
            as the first ``1/S`` of the KD teacher's one epoch
            (`dekd_teacher_plan`).
        augment: the training augmentation, a policy of
            `keras_tfkd.data.AUGMENTATIONS` (None: the data set's reference
            policy, ``"shift"`` for digits and Fashion-MNIST; ``"cifar"`` is
            the paper's crop with padding 4, horizontal flip and a rotation of
            up to 15 degrees).
        validation_fraction: the share of the training split held out
            (stratified, seed 0: `keras_tfkd.data.holdout`) to select each
            run's epoch by validation accuracy; the test accuracy at that
            epoch is the headline. 0 holds nothing out (the headline is then
            the final epoch's test accuracy).
        kl: the KL form of every method, ``"batchmean"`` (the registry's
            rows: the published meaning at any K) or ``"reference"`` (the
            authors' KL / K with the published multipliers).
        data_dir: passed to `keras_tfkd.data.load`.
        limit: the first N examples of each split (an int), or of the train
            and test splits (``(n_train, n_test)``, None for all of one).
        preset: the name of the `PRESETS` entry this config came from
            (`StudyConfig.from_preset`), shown in results.md; it changes no
            result.
        compilation_cache: on JAX, reuse XLA compilations across runs
            (`runs.compilation_cache`), kept in the output folder.
        plot: write results.png.
        tune: 0 (no tuning), or N: each method at its best of N settings of
            its search space (`keras_tfkd.search_spaces`), chosen by the
            validation accuracy of one run on `tune_seed`, before the study
            runs the chosen setting on every seed (`keras_tfkd.study.tune`;
            the baseline is tuned over its learning rate).
        tune_seed: the seed of the tuning runs (default 100, apart from the
            study's seeds).
    """

    output_dir: str = "runs/study"
    dataset: str = "digits"
    epochs: int = 12
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    methods: tuple[str, ...] = experiments_lib.METHODS
    student: str = "cnn_tiny"
    teacher: str | None = "cnn_small"
    batch_size: int = 64
    learning_rate: float = 1e-2
    dekd_teacher_epochs: int = 1
    dekd_teacher_fraction: float = 0.25
    augment: str | None = None
    validation_fraction: float = 0.1
    kl: str = "batchmean"
    data_dir: str | None = None
    limit: int | tuple[int | None, int | None] | None = None
    preset: str | None = None
    compilation_cache: bool = True
    plot: bool = True
    tune: int = 0
    tune_seed: int = 100

    def __post_init__(self):
        if self.kl not in experiments_lib.KL_FORMS:
            raise ValueError(
                f"`kl` must be one of {experiments_lib.KL_FORMS}, got kl={self.kl!r}."
            )
        methods = tuple(self.methods)
        for m in methods:
            if lm_config.is_text_dataset(self.dataset):  # a language-model study
                lm_config.check_lm_method(m)
            else:
                experiments_lib.check_method(m)
        if not methods:
            raise ValueError("`methods` is empty: name at least one method.")
        object.__setattr__(self, "methods", methods)
        seeds = tuple(self.seeds)
        if not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds
        ):
            raise ValueError(
                f"`seeds` must be a non-empty list of ints, got {seeds!r}."
            )
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"`seeds` has duplicates: seeds={seeds!r}.")
        object.__setattr__(self, "seeds", seeds)
        for name in ("epochs", "batch_size", "dekd_teacher_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        _check_limit(self.limit)
        for name, low in (("tune", 0), ("tune_seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"`{name}` must be an integer >= {low}, got {value!r}."
                )
        if self.augment is not None and self.augment not in data_lib.AUGMENTATIONS:
            raise ValueError(
                f"`augment` must be None or one of {data_lib.AUGMENTATIONS}, got "
                f"augment={self.augment!r}."
            )
        share = self.validation_fraction
        if (
            isinstance(share, bool)
            or not isinstance(share, (int, float))
            or not 0 <= share < 1
        ):
            raise ValueError(
                "`validation_fraction` must be a number in [0, 1) (0: no "
                f"validation split), got validation_fraction={share!r}."
            )
        fraction = self.dekd_teacher_fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float))
            or not 0 < fraction < 1
            or abs(round(1 / fraction) * fraction - 1) > 1e-6
        ):
            raise ValueError(
                "`dekd_teacher_fraction` must be 1/S for an integer S >= 2 (0.5, "
                f"0.25, 0.2, ...), got {fraction!r}."
            )
        if "dekd" in methods and (
            self.dekd_teacher_epochs > self.epochs
            or (self.dekd_teacher_epochs == self.epochs and self.epochs > 1)
        ):
            raise ValueError(
                "`dekd_teacher_epochs` must be less than `epochs`, got "
                f"dekd_teacher_epochs={self.dekd_teacher_epochs} with "
                f"epochs={self.epochs}: a De-KD teacher trained that long is the KD "
                "teacher (the whole run), so De-KD would silently equal KD. Use "
                "fewer De-KD teacher epochs, more epochs, or leave out dekd."
            )
        needs_teacher = sorted(set(TEACHER_METHODS) & set(methods))
        if self.teacher is None and needs_teacher:
            raise ValueError(
                f"{', '.join(needs_teacher)} "
                f"{'needs' if len(needs_teacher) == 1 else 'need'} a teacher model, "
                "got teacher=None: give a teacher (--teacher), or leave "
                f"{'it' if len(needs_teacher) == 1 else 'them'} out of the methods."
            )
        if self.student == self.teacher and needs_teacher:
            raise ValueError(
                f"`student` and `teacher` are both {self.student!r}: KD, Re-KD and "
                "De-KD need two different models (a weak and a strong one)."
            )

    @classmethod
    def from_preset(cls, name=None, **overrides):
        """The config of a named study (`keras_tfkd.study.PRESETS`), with
        `overrides` (any field) winning over the preset's settings.

        >>> StudyConfig.from_preset("fashion_mnist_regime").student
        'cnn5'
        >>> StudyConfig.from_preset("fashion_mnist_regime", epochs=5).epochs
        5
        """
        from keras_tfkd import presets

        chosen = presets.preset(name or presets.DEFAULT_PRESET)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(
                f"StudyConfig has no field {unknown[0]!r}; fields: "
                f"{', '.join(sorted(fields))}."
            )
        return cls(**{**chosen.settings, "preset": chosen.name, **overrides})

    def train_config(self):
        from keras_tfkd import runs

        return runs.TrainConfig(
            optimizer="adam",
            learning_rate=self.learning_rate,
            lr_schedule="cosine",
            augment=self.augment,
            drop_remainder=True,
        )


def _check_limit(limit):
    """A ValueError unless `limit` is None, an int >= 1 or (train, test) of those."""
    parts = limit if isinstance(limit, (tuple, list)) else (limit,)
    ok = len(parts) in (1, 2) and all(
        p is None or (isinstance(p, int) and not isinstance(p, bool) and p >= 1)
        for p in parts
    )
    if not ok or (len(parts) == 1 and limit is not None and parts[0] is None):
        raise ValueError(
            "`limit` must be None, an integer >= 1 (the first N examples of each "
            "split) or (n_train, n_test) of those (None: all of that split), got "
            f"limit={limit!r}."
        )


def _study_experiment(config, method):
    """The registry row of `method`, moved onto the study's models and data."""
    base = experiments_lib.get(STUDY_SOURCES[method])
    student, teacher = config.student, config.teacher
    if method == "rekd":
        student, teacher = teacher, student
    elif method == "tfkd_self":
        teacher = student
    elif method in experiments_lib.ONE_MODEL_METHODS:
        teacher = None
    overrides = dict(
        student=student,
        teacher=teacher,
        dataset=config.dataset,
        epochs=config.epochs,
        batch_size=config.batch_size,
    )
    if base.teacher_source is not None:
        overrides["teacher_batch_size"] = config.batch_size
    if method == "dekd":
        overrides["teacher_epochs"] = config.dekd_teacher_epochs
    if method == "dkd":
        # The warm-up is a share of the run's steps, rising every step: 20 of
        # mdistiller's 240 epochs (whole epochs would be the full weight from
        # the first step of a short run).
        overrides["warmup_fraction"] = round(base.warmup_epochs / base.epochs, 4)
    if config.kl == "reference" and method in experiments_lib.KL_METHODS:
        overrides.update(kl="reference", multiplier=base.published_multiplier)
    return base.replace(**overrides)


def plan(config):
    """The runs of a study, in order: ``[(experiment, seed), ...]``.

    Per seed: the baselines (the student, and the teacher when KD or Re-KD
    need it), then every other method. Teachers not planned here are trained
    on demand: the De-KD teacher by `runs.execute` (after
    ``dekd_teacher_epochs`` epochs) or, in a one-epoch study, by `run_study`
    on part of the epoch (`dekd_teacher_plan`).
    """
    methods = config.methods
    experiments = [
        _study_experiment(config, m) for m in experiments_lib.METHODS if m in methods
    ]
    jobs = []
    baselines = []
    if "baseline" in methods:
        students = [e.student for e in experiments]
        for name in dict.fromkeys([config.student, *students]):
            baselines.append(
                _study_experiment(config, "baseline").replace(student=name)
            )
    others = [e for e in experiments if e.method != "baseline"]
    for seed in config.seeds:
        jobs += [(e, seed) for e in baselines]
        jobs += [(e, seed) for e in others]
    return jobs


def _steps(num_examples, batch_size):
    """Train steps per epoch of a study run (its last, smaller batch dropped)."""
    return data_lib.num_batches(num_examples, batch_size, drop_remainder=True)


def dekd_teacher_plan(config, num_train_examples):
    """How the De-KD teacher of a study is trained, against the KD teacher.

    Returns a dict: ``fraction`` (None, or the part of the single epoch of
    a one-epoch study, see `StudyConfig.dekd_teacher_fraction`), ``epochs``
    (epochs it is trained: ``dekd_teacher_epochs``, or 1 of its
    ``schedule_epochs``-epoch run on a part of the data), ``schedule_epochs``
    (the length of the cosine schedule it is stopped in), ``train_examples``
    (the size of the set it trains on), ``steps`` (its optimizer steps),
    ``schedule_steps`` (the steps its schedule spans) and
    ``kd_teacher_steps`` (the steps of the KD teacher, the whole run).

    >>> p = dekd_teacher_plan(StudyConfig(epochs=1), 1347)
    >>> p["fraction"], p["steps"], p["kd_teacher_steps"]
    (0.25, 5, 21)
    """
    n, bs = int(num_train_examples), config.batch_size
    full = _steps(n, bs)
    kd = {"kd_teacher_steps": config.epochs * full}
    if config.epochs > 1:
        return {
            **kd,
            "fraction": None,
            "epochs": config.dekd_teacher_epochs,
            "schedule_epochs": config.epochs,
            "train_examples": n,
            "steps": config.dekd_teacher_epochs * full,
            "schedule_steps": config.epochs * full,
        }
    parts = round(1 / config.dekd_teacher_fraction)
    subset = max(1, round(n / parts))
    steps = _steps(subset, bs)
    return {
        **kd,
        "fraction": config.dekd_teacher_fraction,
        "epochs": 1,
        "schedule_epochs": parts,
        "train_examples": subset,
        "full_train_examples": n,
        "steps": steps,
        "schedule_steps": parts * steps,
    }


def _fraction_text(fraction):
    return f"1/{round(1 / fraction)}"


def _dekd_plan_line(config, dplan):
    teacher = config.teacher
    if dplan["fraction"] is None:
        e = dplan["epochs"]
        return (
            f"De-KD teacher: {teacher} after {e} epoch{'s' if e > 1 else ''} of its "
            f"{dplan['schedule_epochs']}-epoch run ({dplan['steps']} of "
            f"{dplan['schedule_steps']} steps; the KD teacher is the best checkpoint "
            "of the whole run)."
        )
    frac = _fraction_text(dplan["fraction"])
    return (
        f"De-KD teacher: a one-epoch study, where one epoch of training is the KD "
        f"teacher itself, so the De-KD teacher is {teacher} after the first {frac} "
        f"of that epoch: {dplan['steps']} steps (the KD teacher: "
        f"{dplan['kd_teacher_steps']}) at the learning rates of the epoch's start, "
        f"on a random {dplan['train_examples']} of the "
        f"{dplan['full_train_examples']} training examples (drawn with the seed)."
    )


def _dekd_subset(dataset, size, seed):
    """`dataset` with a random `size` of its training examples (test unchanged)."""
    n = dataset.num_examples("train")
    keep = np.sort(np.random.RandomState(seed).permutation(n)[:size])
    if dataset.in_memory:
        return dataclasses.replace(
            dataset, x_train=dataset.x_train[keep], y_train=dataset.y_train[keep]
        )
    return dataclasses.replace(
        dataset, train_files=dataset.train_files[keep], y_train=dataset.y_train[keep]
    )
