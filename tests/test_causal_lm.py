"""KerasHub causal LMs distilled token by token (GPT-2 from a config, no weights)."""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from keras_tfkd import Distiller, losses, recipes, teachers  # noqa: E402

N, L, V = 8, 12, 64


def _gpt2(seed, vocabulary_size=V, num_layers=1, preprocessor=None):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


def _batch(seed=0):
    r = np.random.default_rng(seed)
    ids = r.integers(1, V, size=(N, L)).astype("int32")
    mask = np.arange(L)[None] < r.integers(3, L + 1, size=(N, 1))
    ids = np.where(mask, ids, 0).astype("int32")
    x = {"token_ids": ids, "padding_mask": mask}
    y = np.roll(ids, -1, axis=1)
    return x, y, mask.astype("float32")


@pytest.fixture(scope="module")
def lms():
    return _gpt2(0), _gpt2(1, num_layers=2)


def test_a_causal_lm_distils_then_generates_and_saves(lms, tmp_path):
    student, teacher = lms
    x, y, mask = _batch()
    before = [w.copy() for w in student.get_weights()]
    distiller = recipes.kd(student, teacher, alpha=0.5, temperature=2.0)
    assert (distiller.token_axes, distiller.num_classes) == (2, V)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = distiller.fit(x, y, sample_weight=mask, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert history.history["soft_loss"][0] > 0
    assert any(not np.allclose(a, b) for a, b in zip(before, student.get_weights()))
    out = student.generate(
        {"token_ids": x["token_ids"][:2], "padding_mask": x["padding_mask"][:2]},
        stop_token_ids=None,
    )
    assert out["token_ids"].shape == (2, L)
    student.save(tmp_path / "student.keras")
    again = keras.saving.load_model(tmp_path / "student.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(again(x)),
        keras.ops.convert_to_numpy(student(x)),
        atol=1e-5,
    )


def _token_mean_kd(student, teacher, x, y, mask, t=2.0):
    z_s = keras.ops.convert_to_numpy(student(x)).astype("float64")
    z_t = keras.ops.convert_to_numpy(teacher(x)).astype("float64")

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    ce = -np.take_along_axis(log_softmax(z_s), y[..., None], -1)[..., 0]
    p_t = np.exp(log_softmax(z_t / t))
    kl = t**2 * (p_t * (log_softmax(z_t / t) - log_softmax(z_s / t))).sum(-1)
    return 0.5 * (ce * mask).sum() / mask.sum() + 0.5 * (kl * mask).sum() / mask.sum()


def test_padding_never_counts_and_keras_distillation_agrees_without_it(lms):
    student, teacher = lms
    x, y, mask = _batch(1)
    distiller = recipes.kd(student, teacher, alpha=0.5, temperature=2.0)
    got = float(distiller.compute_loss(x=x, y=y, y_pred=student(x), sample_weight=mask))
    np.testing.assert_allclose(
        got, _token_mean_kd(student, teacher, x, y, mask), rtol=1e-4
    )
    # Without padding, keras.distillation (told to softmax both sides) agrees.
    full = np.ones_like(mask)
    ours = float(
        Distiller(
            student=student,
            teacher=teacher,
            soft_loss=losses.SoftTargetKL(temperature=2.0),
            hard_weight=1.0,
            soft_weight=1.0,
        ).compute_loss(x=x, y=y, y_pred=student(x), sample_weight=full)
    )
    theirs = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=2.0, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=0.5,
    )
    theirs.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    value = float(theirs.compute_loss(x=x, y=y, y_pred=student(x)))
    # keras.distillation: 0.5 * CE + 0.5 * T^2 KL, each a mean over tokens.
    np.testing.assert_allclose(0.5 * ours, value, rtol=1e-4)


def test_a_padded_teacher_vocabulary_is_refused_or_cut_explicitly(lms):
    student, _ = lms
    padded = _gpt2(2, vocabulary_size=V + 8)
    with pytest.raises(
        ValueError, match=r"vocabulary of 72 tokens but the student's 64"
    ):
        recipes.kd(student, padded, alpha=0.5, temperature=2.0)
    smaller = _gpt2(3, vocabulary_size=V - 8)
    with pytest.raises(ValueError, match="another\ntokenizer|another tokenizer"):
        recipes.kd(student, smaller, alpha=0.5, temperature=2.0)
    cut = teachers.TruncatedVocabulary(padded, vocabulary_size=V)
    x, y, mask = _batch(2)
    distiller = recipes.kd(student, cut, alpha=0.5, temperature=2.0)
    z_t = keras.ops.convert_to_numpy(cut(x))
    np.testing.assert_allclose(
        z_t, keras.ops.convert_to_numpy(padded(x))[..., :V], atol=1e-6
    )
    value = float(
        distiller.compute_loss(x=x, y=y, y_pred=student(x), sample_weight=mask)
    )
    assert np.isfinite(value)
    with pytest.raises(ValueError, match="can only be cut down"):
        teachers.TruncatedVocabulary(smaller, vocabulary_size=V)


def _preprocessor(words):
    vocabulary = {"<|endoftext|>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tokenizer = keras_hub.tokenizers.GPT2Tokenizer(vocabulary=vocabulary, merges=[])
    return keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=L
    )


def test_preprocessor_output_trains_and_another_tokenizer_is_refused():
    words = list("abcdefghij")
    pre = _preprocessor(words)
    vocab = pre.tokenizer.vocabulary_size()
    student = _gpt2(4, vocabulary_size=vocab, preprocessor=pre)
    teacher = _gpt2(5, vocabulary_size=vocab, num_layers=2, preprocessor=pre)
    x, y, sample_weight = pre(["abc", "defgh", "ij", "a"])
    distiller = recipes.tfkd_reg(student, vocab, alpha=0.5, temperature=20.0)
    distiller.compile(optimizer="adam")
    history = distiller.fit(
        keras.tree.map_structure(keras.ops.convert_to_numpy, x),
        keras.ops.convert_to_numpy(y),
        sample_weight=keras.ops.convert_to_numpy(sample_weight),
        epochs=1,
        verbose=0,
    )
    assert np.isfinite(history.history["loss"][0])
    recipes.kd(student, teacher, alpha=0.5, temperature=2.0)  # same tokenizer
    other = _gpt2(6, vocabulary_size=vocab, preprocessor=_preprocessor(words[::-1]))
    with pytest.raises(ValueError, match="another tokenizer than the student"):
        recipes.kd(student, other, alpha=0.5, temperature=2.0)


def test_the_language_model_example_of_the_docs_runs():
    """docs/building-blocks.md, "Language models", as written."""
    import os
    import re

    path = os.path.join(
        os.path.dirname(__file__), os.pardir, "docs", "building-blocks.md"
    )
    with open(path) as f:
        section = f.read().split("## Language models: sequence outputs")[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(block, "building-blocks.md (Language models)", "exec"), namespace)
    assert namespace["distiller"].token_axes == 2
    history = namespace["distiller"].history.history
    assert np.isfinite(history["loss"][0]) and history["soft_loss"][0] > 0
