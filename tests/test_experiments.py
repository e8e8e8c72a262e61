"""The experiment registry holds every docs/paper.md row; overrides; the KL form."""

import dataclasses
import importlib.resources
import json
import re

import keras
import numpy as np
import pytest
import reference as ref
from helpers import fixed_logits_model
from keras import ops

from keras_tfkd import experiments, losses, recipes

# Backend-independent (the registry's rows and their derivation): one session.
pytestmark = pytest.mark.one_backend

# docs/paper.md, "KD-style runs" -- one line per (student <- teacher) of the table,
# written out here from the paper: (id, alpha, T, multiplier, batch).
KD_TABLE = [
    ("kd/mobilenet_v2_from_resnet18", 0.95, 20, 1, 128),
    ("kd/mobilenet_v2_from_densenet121", 0.95, 20, 1, 128),
    ("kd/mobilenet_v2_from_resnet101", 0.95, 20, 1, 128),
    ("kd/mobilenet_v2_from_resnext29_8x64d", 0.95, 20, 1, 64),
    ("tfkd_self/mobilenet_v2_from_mobilenet_v2", 0.95, 20, 1, 128),
    ("kd/shufflenet_v2_from_resnet18", 0.95, 20, 1, 128),
    ("kd/shufflenet_v2_from_resnet50", 0.95, 20, 1, 128),
    ("kd/shufflenet_v2_from_densenet121", 0.95, 20, 1, 128),
    ("kd/shufflenet_v2_from_resnext29_8x64d", 0.95, 20, 1, 64),
    ("tfkd_self/shufflenet_v2_from_shufflenet_v2", 0.95, 20, 1, 128),
    ("rekd/resnet18_from_mobilenet_v2", 0.6, 20, 1, 128),
    ("rekd/resnet18_from_shufflenet_v2", 0.6, 20, 1, 128),
    ("kd/resnet18_from_resnet50", 0.6, 20, 1, 64),
    ("kd/resnet18_from_resnext29_8x64d", 0.6, 20, 1, 64),
    ("kd/resnet18_from_densenet121", 0.95, 6, 1, 128),
    ("tfkd_self/resnet18_from_resnet18", 0.95, 6, 50, 128),
    ("rekd/resnet50_from_mobilenet_v2", 0.6, 20, 1, 128),
    ("rekd/resnet50_from_shufflenet_v2", 0.6, 20, 1, 128),
    ("tfkd_self/resnet50_from_resnet50", 0.95, 6, 1, 128),
    ("rekd/resnext29_8x64d_from_mobilenet_v2", 0.6, 20, 1, 64),
    ("tfkd_self/resnext29_8x64d_from_resnext29_8x64d", 0.9, 20, 100, 64),
    ("rekd/densenet121_from_mobilenet_v2", 0.6, 20, 1, 128),
    ("rekd/densenet121_from_shufflenet_v2", 0.6, 20, 1, 100),
    ("tfkd_self/densenet121_from_densenet121", 0.9, 20, 50, 100),
    ("tfkd_self/googlenet_from_googlenet", 0.4, 20, 50, 64),
    ("kd/cnn5_from_resnet18", 0.9, 20, 1, 128),
]

# docs/paper.md, "Tf-KD_reg runs": (id, alpha, T, multiplier, batch).
REG_TABLE = [
    ("tfkd_reg/mobilenet_v2", 0.95, 40, 1, 128),
    ("tfkd_reg/shufflenet_v2", 0.95, 10, 1, 128),
    ("tfkd_reg/resnet18", 0.1, 20, 100, 128),
    ("tfkd_reg/googlenet", 0.1, 40, 50, 64),
    ("tfkd_reg/densenet121", 0.1, 40, 1, 128),
    ("tfkd_reg/resnext29_8x64d", 0.5, 40, 1, 64),
]

# Published CIFAR-100 top-1 (%) of docs/paper.md, by id.
PUBLISHED = {
    "baseline/mobilenet_v2": 68.38,
    "baseline/resnet18": 75.87,
    "baseline/resnext29_8x64d": 81.03,
    "tfkd_self/resnet18_from_resnet18": 77.10,
    "tfkd_reg/resnet18": 77.36,
    "kd/mobilenet_v2_from_resnet18": 71.05,
    "lsr/resnet18": 77.26,
    "rekd/resnet18_from_shufflenet_v2": 77.35,
    "dekd/mobilenet_v2_from_resnet18": 70.65,
    "dekd/resnet18_from_resnext29_8x64d": 77.28,
}

PAPER_MODELS = [
    "mobilenet_v2",
    "shufflenet_v2",
    "resnet18",
    "resnet50",
    "googlenet",
    "densenet121",
    "resnext29_8x64d",
]


@pytest.mark.parametrize("exp_id,alpha,t,m,batch", KD_TABLE + REG_TABLE)
def test_every_paper_row_is_registered(exp_id, alpha, t, m, batch):
    exp = experiments.get(exp_id)
    assert (exp.alpha, exp.temperature, exp.published_multiplier, exp.batch_size) == (
        alpha,
        t,
        m,
        batch,
    )
    # Stored in batch-mean units: the paper's m was tuned with KL / K at K = 100.
    assert (exp.kl, exp.multiplier) == ("batchmean", pytest.approx(m / 100, rel=1e-12))
    assert (exp.dataset, exp.epochs, exp.protocol) == ("cifar100", 200, "cifar")
    if exp.method == "tfkd_reg":
        assert exp.correct_prob == 0.99 and exp.teacher is None


def test_published_accuracies():
    for exp_id, acc in PUBLISHED.items():
        assert experiments.get(exp_id).published_accuracy == acc, exp_id


@pytest.mark.parametrize("model", [*PAPER_MODELS, "cnn5"])
def test_baseline_and_lsr_for_every_model(model):
    base = experiments.get(f"baseline/{model}")
    lsr = experiments.get(f"lsr/{model}")
    assert base.teacher is None and base.alpha == 0 and base.temperature is None
    assert lsr.epsilon == 0.1 and lsr.teacher is None
    assert base.batch_size == lsr.batch_size


def test_dekd_rows():
    teacher_epochs = {"resnet18": 1, "resnet50": 50, "resnext29_8x64d": 50}
    rows = [experiments.get(i) for i in experiments.available("dekd")]
    assert {e.teacher for e in rows} == set(teacher_epochs)
    for exp in rows:
        assert exp.teacher_epochs == teacher_epochs[exp.teacher], exp.id
        kd_twin = f"kd/{exp.student}_from_{exp.teacher}"
        if kd_twin in experiments.REGISTRY:  # same alpha/T as the normal-KD row
            twin = experiments.get(kd_twin)
            assert (exp.alpha, exp.temperature) == (twin.alpha, twin.temperature)
    first = experiments.get("dekd/mobilenet_v2_from_resnet18")
    assert first.teacher_accuracy == 15.48
    teacher = first.teacher_experiment()
    # The defective teacher is a stopped *normal* run of the full length.
    assert (teacher.method, teacher.student, teacher.epochs) == (
        "baseline",
        "resnet18",
        200,
    )


def test_imagenet_experiments():
    ids = [i for i in experiments.available() if "imagenet_" in i]
    students = {experiments.get(i).student for i in ids}
    assert students == set(experiments.IMAGENET_APPLICATIONS)
    for exp_id in ids:
        exp = experiments.get(exp_id)
        assert (exp.dataset, exp.epochs, exp.batch_size, exp.protocol) == (
            "imagenet",
            90,
            512,
            "imagenet",
        )
    for builder in experiments.IMAGENET_APPLICATIONS.values():
        assert callable(getattr(keras.applications, builder))
    assert {experiments.get(i).method for i in ids} >= {
        "baseline",
        "tfkd_self",
        "tfkd_reg",
    }


def test_ids_are_derived_and_well_formed():
    pattern = re.compile(r"^[a-z_]+/[a-z0-9_]+(_from_[a-z0-9_]+)?$")
    assert set(experiments.METHODS) == {e.method for e in experiments.REGISTRY.values()}
    for exp_id, exp in experiments.REGISTRY.items():
        assert pattern.match(exp_id), exp_id
        assert (
            exp.id
            == exp_id
            == experiments.experiment_id(exp.method, exp.student, exp.teacher)
        )
        one_model = exp.method in experiments.ONE_MODEL_METHODS
        assert ("_from_" in exp_id) != one_model, exp_id
        if exp.method == "tfkd_self":
            assert exp.teacher == exp.student
    assert experiments.available() == sorted(experiments.REGISTRY)
    assert experiments.KL_FORMS == losses.KL_FORMS


def test_unknown_id_lists_the_closest_and_all():
    with pytest.raises(experiments.UnknownNameError) as info:
        experiments.get("tfkd_reg/resnet19")
    message = str(info.value)
    assert "Closest: tfkd_reg/resnet18" in message
    assert "keras-tfkd list experiments" in message
    assert info.value.valid == experiments.available()
    with pytest.raises(experiments.UnknownNameError, match="valid methods"):
        experiments.available("distill")


def test_replace_overrides_and_keeps_provenance():
    exp = experiments.get("tfkd_self/resnet18_from_resnet18")
    small = exp.replace(student="cnn_tiny", dataset="digits", epochs=3, alpha=0.5)
    assert small.id == "tfkd_self/cnn_tiny_from_cnn_tiny"
    assert (small.teacher, small.alpha, small.epochs) == ("cnn_tiny", 0.5, 3)
    assert small.based_on == exp.id and small.replace(epochs=4).based_on == exp.id
    assert exp.published_accuracy == 77.10 and small.published_accuracy is None
    assert exp.replace(dataset="cifar100", alpha=0.95) is exp  # no change
    assert exp.student == "resnet18" and exp.based_on is None  # unchanged, frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.alpha = 0.1
    assert isinstance(exp.replace(temperature=4).temperature, float)
    lsr = experiments.get("lsr/resnet18").replace(method="baseline")
    assert lsr.id == "baseline/resnet18"
    kd = experiments.get("kd/mobilenet_v2_from_resnet18").replace(teacher="resnet50")
    assert kd.id == "kd/mobilenet_v2_from_resnet50"


@pytest.mark.parametrize(
    "overrides,error,words",
    [
        ({"alpah": 0.5}, TypeError, ["alpah", "0.5", "alpha"]),
        ({"alpha": "0.5"}, TypeError, ["alpha", "'0.5'"]),
        ({"epochs": 2.5}, TypeError, ["epochs", "2.5"]),
        ({"batch_size": True}, TypeError, ["batch_size", "True"]),
        ({"id": "x/y"}, TypeError, ["id", "x/y"]),
        ({"alpha": 1.5}, ValueError, ["alpha", "1.5"]),
        ({"temperature": 0}, ValueError, ["temperature", "0"]),
        ({"multiplier": -1}, ValueError, ["multiplier", "-1"]),
        ({"epochs": 0}, ValueError, ["epochs", "0"]),
        ({"teacher": "resnet50"}, ValueError, ["teacher", "resnet50"]),
        ({"method": "distill"}, ValueError, ["distill", "tfkd_reg"]),
    ],
)
def test_replace_errors_name_the_key_and_value(overrides, error, words):
    with pytest.raises(error) as info:
        experiments.get("tfkd_reg/resnet18").replace(**overrides)
    for word in words:
        assert word in str(info.value)


def test_replace_rejects_soft_settings_on_plain_methods():
    with pytest.raises(ValueError, match="alpha"):
        experiments.get("baseline/resnet18").replace(alpha=0.3)
    with pytest.raises(ValueError, match="teacher_epochs"):
        experiments.get("dekd/mobilenet_v2_from_resnet18").replace(teacher_epochs=None)


def test_hyperparameters_and_teacher_experiment():
    exp = experiments.get("kd/mobilenet_v2_from_resnext29_8x64d")
    assert exp.hyperparameters() == {
        "batch_size": 64,
        "alpha": 0.95,
        "temperature": 20.0,
        "multiplier": 0.01,
        "kl": "batchmean",
        "teacher_batch_size": 64,
    }
    teacher = exp.teacher_experiment()
    assert (teacher.id, teacher.batch_size) == ("baseline/resnext29_8x64d", 64)
    assert experiments.get("tfkd_reg/resnet18").teacher_experiment() is None
    assert experiments.get("lsr/resnet18").hyperparameters() == {
        "batch_size": 128,
        "epsilon": 0.1,
    }


# ------------------------------------------------------------ the data file
# Every registry row, frozen: id alpha T multiplier batch teacher_batch
# teacher_epochs epochs published% ("-": None). A change to experiments.json
# shows up here.
FROZEN_REGISTRY = """
baseline/cnn5 0 - 1 128 - - 200 -
baseline/densenet121 0 - 1 128 - - 200 79.04
baseline/googlenet 0 - 1 64 - - 200 78.72
baseline/imagenet_densenet121 0 - 1 512 - - 90 -
baseline/imagenet_mobilenet_v2 0 - 1 512 - - 90 -
baseline/imagenet_resnet50 0 - 1 512 - - 90 -
baseline/mobilenet_v2 0 - 1 128 - - 200 68.38
baseline/resnet101 0 - 1 128 - - 200 -
baseline/resnet18 0 - 1 128 - - 200 75.87
baseline/resnet50 0 - 1 128 - - 200 78.16
baseline/resnext29_8x64d 0 - 1 64 - - 200 81.03
baseline/shufflenet_v2 0 - 1 128 - - 200 70.34
cskd/mobilenet_v2 0 4 1.0 128 - - 200 -
cskd/resnet18 0 4 1.0 128 - - 200 -
dekd/mobilenet_v2_from_resnet18 0.95 20 0.01 128 128 1 200 70.65
dekd/mobilenet_v2_from_resnet50 0.95 20 0.01 128 128 50 200 -
dekd/mobilenet_v2_from_resnext29_8x64d 0.95 20 0.01 64 64 50 200 -
dekd/resnet18_from_resnext29_8x64d 0.6 20 0.01 64 64 50 200 77.28
dekd/shufflenet_v2_from_resnet18 0.95 20 0.01 128 128 1 200 71.82
dekd/shufflenet_v2_from_resnet50 0.95 20 0.01 128 128 50 200 -
dekd/shufflenet_v2_from_resnext29_8x64d 0.95 20 0.01 64 64 50 200 -
dkd/mobilenet_v2_from_resnet18 0 4 1.0 64 128 - 240 -
dkd/resnet18_from_resnet50 0 4 1.0 64 128 - 240 -
dkd/shufflenet_v2_from_resnet18 0 4 1.0 64 128 - 240 -
kd/cnn5_from_resnet18 0.9 20 0.01 128 128 - 200 -
kd/mobilenet_v2_from_densenet121 0.95 20 0.01 128 128 - 200 -
kd/mobilenet_v2_from_resnet101 0.95 20 0.01 128 128 - 200 -
kd/mobilenet_v2_from_resnet18 0.95 20 0.01 128 128 - 200 71.05
kd/mobilenet_v2_from_resnext29_8x64d 0.95 20 0.01 64 64 - 200 -
kd/resnet18_from_densenet121 0.95 6 0.01 128 128 - 200 -
kd/resnet18_from_resnet50 0.6 20 0.01 64 128 - 200 77.19
kd/resnet18_from_resnext29_8x64d 0.6 20 0.01 64 64 - 200 -
kd/shufflenet_v2_from_densenet121 0.95 20 0.01 128 128 - 200 -
kd/shufflenet_v2_from_resnet18 0.95 20 0.01 128 128 - 200 72.05
kd/shufflenet_v2_from_resnet50 0.95 20 0.01 128 128 - 200 -
kd/shufflenet_v2_from_resnext29_8x64d 0.95 20 0.01 64 64 - 200 -
lsr/cnn5 0 - 1 128 - - 200 -
lsr/densenet121 0 - 1 128 - - 200 -
lsr/googlenet 0 - 1 64 - - 200 79.07
lsr/imagenet_densenet121 0 - 1 512 - - 90 -
lsr/imagenet_mobilenet_v2 0 - 1 512 - - 90 -
lsr/imagenet_resnet50 0 - 1 512 - - 90 -
lsr/mobilenet_v2 0 - 1 128 - - 200 69.32
lsr/resnet18 0 - 1 128 - - 200 77.26
lsr/resnet50 0 - 1 128 - - 200 -
lsr/resnext29_8x64d 0 - 1 64 - - 200 -
lsr/shufflenet_v2 0 - 1 128 - - 200 70.83
ols/mobilenet_v2 0.5 - 1.0 128 - - 300 -
ols/resnet18 0.5 - 1.0 128 - - 300 -
pskd/mobilenet_v2 0.8 - 1.0 128 - - 300 -
pskd/resnet18 0.8 - 1.0 128 - - 300 -
rekd/densenet121_from_mobilenet_v2 0.6 20 0.01 128 128 - 200 -
rekd/densenet121_from_shufflenet_v2 0.6 20 0.01 100 128 - 200 -
rekd/resnet18_from_mobilenet_v2 0.6 20 0.01 128 128 - 200 77.28
rekd/resnet18_from_shufflenet_v2 0.6 20 0.01 128 128 - 200 77.35
rekd/resnet50_from_mobilenet_v2 0.6 20 0.01 128 128 - 200 79.3
rekd/resnet50_from_shufflenet_v2 0.6 20 0.01 128 128 - 200 -
rekd/resnext29_8x64d_from_mobilenet_v2 0.6 20 0.01 64 128 - 200 81.53
rekd/resnext29_8x64d_from_resnet18 0.6 20 0.01 64 128 - 200 81.62
tfkd_reg/densenet121 0.1 40 0.01 128 - - 200 -
tfkd_reg/googlenet 0.1 40 0.5 64 - - 200 79.22
tfkd_reg/imagenet_densenet121 0.1 40 0.01 512 - - 90 -
tfkd_reg/imagenet_mobilenet_v2 0.95 40 0.01 512 - - 90 -
tfkd_reg/imagenet_resnet50 0.1 20 1.0 512 - - 90 -
tfkd_reg/mobilenet_v2 0.95 40 0.01 128 - - 200 70.88
tfkd_reg/resnet18 0.1 20 1.0 128 - - 200 77.36
tfkd_reg/resnext29_8x64d 0.5 40 0.01 64 - - 200 -
tfkd_reg/shufflenet_v2 0.95 10 0.01 128 - - 200 72.09
tfkd_self/densenet121_from_densenet121 0.9 20 0.5 100 128 - 200 80.26
tfkd_self/googlenet_from_googlenet 0.4 20 0.5 64 64 - 200 80.17
tfkd_self/imagenet_densenet121_from_imagenet_densenet121 0.9 20 0.5 512 512 - 90 -
tfkd_self/imagenet_mobilenet_v2_from_imagenet_mobilenet_v2 0.95 20 0.01 512 512 - 90 -
tfkd_self/imagenet_resnet50_from_imagenet_resnet50 0.95 6 0.01 512 512 - 90 -
tfkd_self/mobilenet_v2_from_mobilenet_v2 0.95 20 0.01 128 128 - 200 70.96
tfkd_self/resnet18_from_resnet18 0.95 6 0.5 128 128 - 200 77.1
tfkd_self/resnet50_from_resnet50 0.95 6 0.01 128 128 - 200 -
tfkd_self/resnext29_8x64d_from_resnext29_8x64d 0.9 20 1.0 64 64 - 200 82.08
tfkd_self/shufflenet_v2_from_shufflenet_v2 0.95 20 0.01 128 128 - 200 72.23
"""


def _field(text):
    if text == "-":
        return None
    return float(text) if "." in text else int(text)


def test_registry_is_the_data_file_and_nothing_else():
    names = (
        "alpha",
        "temperature",
        "multiplier",
        "batch_size",
        "teacher_batch_size",
        "teacher_epochs",
        "epochs",
        "published_accuracy",
    )
    expected = {}
    for line in FROZEN_REGISTRY.strip().splitlines():
        exp_id, *values = line.split()
        expected[exp_id] = dict(zip(names, map(_field, values), strict=True))
    got = {
        exp_id: {name: getattr(exp, name) for name in names}
        for exp_id, exp in experiments.REGISTRY.items()
    }
    assert got == expected
    # Loading the packaged file again gives the same registry, row for row.
    path = importlib.resources.files("keras_tfkd") / experiments.DATA_FILE
    tables = json.loads(path.read_text(encoding="utf-8"))
    assert dict(experiments.load_registry(tables)) == dict(experiments.REGISTRY)
    assert sum(len(t["rows"]) for t in tables.values()) == len(expected) == 78


def test_the_written_out_values_follow_the_derivation_rules():
    reg = experiments.REGISTRY
    for exp in reg.values():
        if exp.teacher_source in ("trained", "early") and exp.protocol == "cifar":
            # a teacher trains with the batch size of its own baseline row
            teacher = reg[f"baseline/{exp.teacher}"]
            assert exp.teacher_batch_size == teacher.batch_size, exp.id
        if exp.method == "lsr":
            assert exp.batch_size == reg[f"baseline/{exp.student}"].batch_size
        if exp.method == "dekd":  # the KD row of the pair, or the student's first
            twin = f"kd/{exp.student}_from_{exp.teacher}"
            kd_rows = [e for e in reg.values() if e.method == "kd"]
            first = next(e for e in kd_rows if e.student == exp.student)
            row = reg.get(twin, first)
            assert (exp.alpha, exp.temperature, exp.batch_size) == (
                row.alpha,
                row.temperature,
                row.batch_size,
            ), exp.id
        if exp.protocol == "imagenet" and exp.method in ("tfkd_self", "tfkd_reg"):
            cifar = reg[exp.source.rsplit(" of ", 1)[1]]
            assert (exp.alpha, exp.temperature, exp.multiplier) == (
                cifar.alpha,
                cifar.temperature,
                cifar.multiplier,
            ), exp.id


def _table(columns, *rows, common=None):
    return {"t": {"common": common or {}, "columns": columns, "rows": list(rows)}}


@pytest.mark.parametrize(
    "tables,words",
    [
        (
            _table(["student", "alfa"], ["resnet18", 0.1], common={"method": "lsr"}),
            ["row 1", "unknown field 'alfa'", "alpha"],
        ),
        (
            _table(
                ["method", "student", "alpha", "temperature"],
                ["tfkd_reg", "resnet18", 0.1, 20],
                ["tfkd_reg", "resnet50", "0.1", 20],
            ),
            ["row 2", "resnet50", "`alpha` must be a number", "'0.1'"],
        ),
        (
            _table(["method", "student"], ["baseline", "mlp", 128]),
            ["row 1", "3 values for 2 columns"],
        ),
        (
            _table(["method", "student"], ["baseline", "mlp"], ["baseline", "mlp"]),
            ["row 2", "duplicate", "baseline/mlp"],
        ),
        (
            _table(["method", "student", "id"], ["baseline", "mlp", "x/y"]),
            ["row 1", "unknown field 'id'"],
        ),
        ({"t": {"colums": [], "rows": []}}, ["table 't'", "colums"]),
    ],
)
def test_a_malformed_row_names_the_table_row_and_field(tables, words):
    with pytest.raises(experiments.RegistryError) as info:
        experiments.load_registry(tables)
    message = str(info.value)
    assert message.startswith(f"{experiments.DATA_FILE}, table 't'")
    for word in words:
        assert word in message


# ------------------------------------------------------------ the KL form
_model = fixed_logits_model


def _loss(distiller, x, y):
    distiller.compile(optimizer="sgd")
    value = distiller.compute_loss(x, ops.convert_to_tensor(y), distiller(x))
    return float(ops.convert_to_numpy(value))


def _batchmean_kl(p_t, z_s):
    """Per-sample KL summed over classes, averaged over the batch (NumPy)."""
    return float(np.mean(ref.kl_per_sample(p_t, ref.log_softmax(z_s))))


def _case(k, n=16, seed=0):
    rng = np.random.default_rng(seed)
    z_s = (rng.normal(size=(n, k)) * 3).astype("float32")
    z_t = (rng.normal(size=(n, k)) * 3).astype("float32")
    y = rng.integers(0, k, n)
    x = np.arange(n, dtype="float32")[:, None]
    return x, y, z_s, z_t


KL_IDS = [
    "kd/mobilenet_v2_from_resnet18",
    "rekd/resnet18_from_mobilenet_v2",
    "dekd/mobilenet_v2_from_resnet18",
    "tfkd_self/resnet18_from_resnet18",
    "tfkd_reg/resnet18",
    "tfkd_reg/mobilenet_v2",
]


def _build(exp, z_s, z_t):
    teacher = None if exp.teacher_source is None else _model(z_t, "teacher")
    return exp.build(_model(z_s, "student"), teacher)


def test_every_kl_row_stores_the_published_multiplier_over_100():
    for exp in experiments.REGISTRY.values():
        if exp.method in experiments.KL_METHODS:
            assert exp.published_multiplier is not None, exp.id
            assert exp.multiplier == pytest.approx(exp.published_multiplier / 100)
        assert exp.kl == "batchmean", exp.id


@pytest.mark.parametrize("exp_id", KL_IDS)
def test_at_k100_the_experiment_is_the_reference_recipe(exp_id):
    exp = experiments.get(exp_id)
    x, y, z_s, z_t = _case(100)
    got = _loss(_build(exp, z_s, z_t), x, y)
    a, t, m = exp.alpha, exp.temperature, exp.published_multiplier
    kl = {"alpha": a, "temperature": t, "multiplier": m, "kl": "reference"}
    if exp.method == "tfkd_reg":
        recipe = recipes.tfkd_reg(_model(z_s, "s2"), 100, **kl)
        expected = ref.tfkd_reg(z_s, y, a, t, m)
    else:
        student, teacher = _model(z_s, "s2"), _model(z_t, "t2")
        recipe = recipes.tfkd_self(student, teacher, **kl)
        expected = ref.kd(z_s, z_t, y, a, t, m)
    np.testing.assert_allclose(got, _loss(recipe, x, y), rtol=1e-5)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # The reference form run verbatim is the same loss at K = 100.
    verbatim = exp.replace(kl="reference", multiplier=m)
    np.testing.assert_allclose(_loss(_build(verbatim, z_s, z_t), x, y), got, rtol=1e-5)


@pytest.mark.parametrize("exp_id", KL_IDS)
def test_at_k10_the_published_meaning_is_kept(exp_id):
    exp = experiments.get(exp_id)
    x, y, z_s, z_t = _case(10, seed=1)
    a, t, m = exp.alpha, exp.temperature, exp.published_multiplier
    ce = ref.ce(z_s, y)
    if exp.method == "tfkd_reg":
        p_t = ref.softmax(ref.virtual_teacher(y, 10, 0.99) / t)
        kl, t_sq = _batchmean_kl(p_t, z_s), 1.0
    else:
        kl, t_sq = _batchmean_kl(ref.softmax(z_t / t), z_s / t), t**2
    # batch-mean KL with the published multiplier over 100 ...
    expected = (1 - a) * ce + a * (m / 100) * t_sq * kl
    got = _loss(_build(exp, z_s, z_t), x, y)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # ... the weight the reference gives the batch-mean KL at K = 100 ...
    assert exp.kl_weight(10) == pytest.approx(exp.kl_weight(100))
    assert exp.kl_weight(10) == pytest.approx(a * m * t_sq / 100)
    # ... whereas copying the reference recipe to K = 10 weighs the KL 10x more.
    verbatim = exp.replace(kl="reference", multiplier=m)
    assert verbatim.kl_weight(10) == pytest.approx(10 * exp.kl_weight(10))
    untranslated = _loss(_build(verbatim, z_s, z_t), x, y)
    np.testing.assert_allclose(
        untranslated - (1 - a) * ce, 10 * (expected - (1 - a) * ce), rtol=1e-4
    )


def test_kl_weight_without_a_kl_term_and_a_bad_kl():
    for exp_id in ("baseline/resnet18", "lsr/resnet18"):
        assert experiments.get(exp_id).kl_weight(10) == 0.0
    with pytest.raises(ValueError, match="`kl` must be one of"):
        experiments.get("tfkd_reg/resnet18").replace(kl="elementwise_mean")


def test_lsr_experiment_builds_the_paper_lsr():
    x, y, z_s, _ = _case(10, seed=2)
    got = _loss(experiments.get("lsr/resnet18").build(_model(z_s, "s")), x, y)
    np.testing.assert_allclose(got, ref.lsr(z_s, y, 0.1), rtol=1e-5)


def test_build_checks_the_teacher():
    _, _, z_s, z_t = _case(10)
    with pytest.raises(ValueError, match="needs a trained teacher"):
        experiments.get("kd/mobilenet_v2_from_resnet18").build(_model(z_s, "s"))
    with pytest.raises(ValueError, match="takes no teacher"):
        experiments.get("tfkd_reg/resnet18").build(_model(z_s, "s"), _model(z_t, "t"))


def test_every_field_is_a_run_flag_or_belongs_to_the_row():
    """`keras-tfkd run`'s flags come from the fields; the rest are the row's own."""
    fields = [f.name for f in dataclasses.fields(experiments.Experiment) if f.init]
    row_only = {"method", "protocol", "source", "based_on"}
    row_only |= {"published_accuracy", "teacher_accuracy", "published_multiplier"}
    assert set(fields) == set(experiments.RUN_FIELDS) | row_only
    for name in experiments.RUN_FIELDS:
        assert experiments.field_kind(name) in ("number", "integer", "string")
    assert experiments.FIELD_CHOICES["kl"] == losses.KL_FORMS
