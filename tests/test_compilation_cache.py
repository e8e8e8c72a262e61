"""A study on JAX compiles into its own persistent cache, then restores JAX's."""

import contextlib
import io

import keras
import pytest

from keras_tfkd.cli import main


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="a JAX cache")
def test_jax_compilation_cache_is_used_then_restored(tmp_path):
    import jax

    before = jax.config.jax_compilation_cache_dir
    folder = tmp_path / "study"
    argv = ["study", "--backend", "jax", "--methods", "baseline", "--seeds", "0"]
    argv += ["--epochs", "1", "--student", "mlp", "--limit", "100"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--output-dir", str(folder)]) == 0
    cache = folder / ".jax_cache"
    assert any(cache.iterdir())  # compilations were written there ...
    assert jax.config.jax_compilation_cache_dir == before  # ... and unset after


def test_other_backends_write_no_jax_cache(tmp_path):
    if keras.backend.backend() == "jax":
        pytest.skip("the JAX case is the test above")
    folder = tmp_path / "study"
    argv = ["study", "--backend", keras.backend.backend(), "--methods", "baseline"]
    argv += ["--seeds", "0", "--epochs", "1", "--student", "mlp"]
    argv += ["--limit", "100"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--output-dir", str(folder)]) == 0
    assert not (folder / ".jax_cache").exists()
