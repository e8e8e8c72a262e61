"""Writes the Colab notebooks of keras-tfkd and their README table.

The notebooks are generated, not edited by hand: edit the cells below, then run

    python notebooks/build_notebooks.py

which rewrites ``notebooks/*.ipynb`` (valid nbformat v4, no outputs, no
execution counts, stable cell ids) and ``docs/notebooks.md`` (the README
section with an "Open in Colab" badge and the estimated full-run time of each
notebook). ``tests/test_notebooks.py`` checks that the committed files are
exactly what this script writes, and executes every notebook in smoke mode.

Every notebook starts with the same setup cell: it picks the Keras backend
(``KERAS_BACKEND``, "jax" unless already set) before Keras is imported, turns
on smoke mode when ``KERAS_TFKD_SMOKE=1``, and installs keras-tfkd from its git
repository when it is not importable (on a fresh Colab runtime).
"""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass
from pathlib import Path

import nbformat

ORG = "keras-tfkd"
REPOSITORY = f"https://github.com/{ORG}/keras-tfkd"
INSTALL_TARGET = f"git+{REPOSITORY}"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCS_PATH = ROOT / "docs" / "notebooks.md"


def colab_url(filename):
    """The URL that opens ``notebooks/<filename>`` of the main branch in Colab."""
    return (
        f"https://colab.research.google.com/github/{ORG}/keras-tfkd/blob/main/"
        f"notebooks/{filename}"
    )


def badge(filename):
    """Markdown of the "Open in Colab" badge of a notebook."""
    return f"[![Open In Colab]({COLAB_BADGE})]({colab_url(filename)})"


@dataclass(frozen=True)
class Spec:
    """One notebook: its file name, title, summary, run time and cells."""

    filename: str
    title: str
    summary: str
    full_run: str  # estimated full-run time on a Colab GPU (one line)
    full_run_detail: str  # what that estimate is made of
    cells: tuple  # ("markdown" | "code", source) pairs
    gpu: bool = False


def md(source):
    return ("markdown", textwrap.dedent(source).strip("\n"))


def code(source):
    return ("code", textwrap.dedent(source).strip("\n"))


# --------------------------------------------------------------------------
# The setup cell shared by every notebook
# --------------------------------------------------------------------------

SETUP = code(
    f"""
    # Setup: pick the backend, smoke mode, install keras-tfkd if needed.
    import importlib
    import os
    import subprocess
    import sys

    # The Keras backend, set before Keras is imported: "jax" unless KERAS_BACKEND
    # is already set; to choose, write e.g. BACKEND = "torch" (or "tensorflow").
    BACKEND = os.environ.get("KERAS_BACKEND", "jax")
    os.environ["KERAS_BACKEND"] = BACKEND

    # Smoke mode (KERAS_TFKD_SMOKE=1, as in the test suite) shrinks data and
    # epochs to a quick offline check. Leave it off for the real run.
    SMOKE = os.environ.get("KERAS_TFKD_SMOKE", "0").lower() in ("1", "true", "yes")

    # Installed from the git repository when it is not importable (fresh Colab).
    SOURCE = "{INSTALL_TARGET}"
    try:
        import keras_tfkd
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", SOURCE])
        importlib.invalidate_caches()
        import keras_tfkd

    import keras

    if keras.backend.backend() != BACKEND:
        raise RuntimeError(
            f"Keras was already imported with the {{keras.backend.backend()!r}} "
            f"backend: restart the runtime, then run this cell first to use "
            f"{{BACKEND!r}}."
        )
    print(
        f"keras {{keras.__version__}} on {{keras.backend.backend()}}, "
        f"keras_tfkd {{keras_tfkd.__version__}}, SMOKE={{SMOKE}}"
    )
    """
)


def header(spec_title, filename, summary, full_run, full_run_detail, extra=""):
    text = f"""
    # {spec_title}

    {badge(filename)}

    {summary}

    **Full run on a Colab GPU: {full_run}** — {full_run_detail}.

    Smoke mode (`KERAS_TFKD_SMOKE=1`, what the test suite runs: tiny data, one
    epoch, no download) takes a minute or two on a CPU.
    """
    text = textwrap.dedent(text).strip("\n")
    if extra:
        text += "\n\n" + textwrap.dedent(extra).strip("\n")
    return ("markdown", text)


# --------------------------------------------------------------------------
# 01: quickstart
# --------------------------------------------------------------------------

QUICKSTART = "01_quickstart.ipynb"
QUICKSTART_TITLE = "Quickstart: plain training vs Tf-KD_reg vs Tf-KD_self"
QUICKSTART_SUMMARY = (
    "Train one small CNN three ways on Fashion-MNIST with `model.fit`: plainly, "
    "with a virtual teacher (Tf-KD_reg) and with a frozen copy of itself as the "
    "teacher (Tf-KD_self); plot the curves, then save the distilled student as "
    "a `.keras` file and reload it."
)
QUICKSTART_RUN = "about 6 minutes on a T4 (estimate, not measured)"
QUICKSTART_DETAIL = (
    "three runs of at most 15 epochs of a 140k-parameter CNN on 60,000 images, "
    "plus about a minute to install"
)

QUICKSTART_CELLS = (
    header(
        QUICKSTART_TITLE,
        QUICKSTART,
        QUICKSTART_SUMMARY,
        QUICKSTART_RUN,
        QUICKSTART_DETAIL,
        """
        Based on *Revisiting Knowledge Distillation via Label Smoothing
        Regularization* (Yuan et al., CVPR 2020). A GPU runtime helps but is
        not required.
        """,
    ),
    SETUP,
    md(
        """
        ## 1. Data

        `keras_tfkd.data.load` returns NumPy arrays; `data.pipeline` turns a
        split into normalised `(x, y)` batches with the data set's reference
        augmentation (a random shift of up to 2 pixels on Fashion-MNIST) that
        `fit` takes on every backend: a `keras.utils.PyDataset` built on NumPy
        on JAX and PyTorch (no TensorFlow needed), a `tf.data` pipeline on
        TensorFlow. Smoke mode uses a slice of scikit-learn's bundled `digits`
        instead, so it runs offline.
        """
    ),
    code(
        """
        import matplotlib.pyplot as plt
        import numpy as np

        from keras_tfkd import callbacks, data, models, recipes

        SEED = 230  # the reference code's seed
        DATASET = "digits" if SMOKE else "fashion_mnist"
        EPOCHS = 1 if SMOKE else 15
        BATCH_SIZE = 64 if SMOKE else 128
        MODEL, WIDTH = ("cnn_tiny", 8) if SMOKE else ("cnn_small", 32)

        ds = data.load(DATASET, limit=(512, 256) if SMOKE else None)
        train = data.pipeline(ds, "train", BATCH_SIZE, seed=SEED)
        test = data.pipeline(ds, "test", 256)
        print(ds)
        """
    ),
    md(
        """
        ## 2. Three ways to train the same model

        All three are a `keras_tfkd.Distiller` (a `keras.Model`) built by a
        recipe, compiled and fitted like any Keras model:

        * **plain**: `recipes.baseline` — cross-entropy only.
        * **Tf-KD_reg**: `recipes.tfkd_reg` — a hand-made *virtual teacher*
          (0.99 on the true class, the rest spread evenly, softened by a
          temperature) mixed with the cross-entropy. No teacher network.
        * **Tf-KD_self**: `recipes.tfkd_self` — the plain model, frozen, is the
          teacher of a fresh copy of the same architecture.

        The hyper-parameters are the paper's ResNet18 settings on CIFAR-100
        (Tf-KD_reg: `alpha=0.1, T=20`, published `multiplier=100`;
        Tf-KD_self: `alpha=0.95, T=6`, published `multiplier=50`). The paper's
        multipliers were tuned at 100 classes with the authors' KL, which
        divides by the number of classes; on the batch-mean KL the recipes use
        (`kl="batchmean"`, the default) the same settings are `m / 100`, and
        they mean the same at 10 classes.

        `keras.callbacks.EarlyStopping` stops a run that stops improving and
        restores its best epoch; `callbacks.SelfTeacherSnapshot` keeps a
        frozen copy of the plain model's best epoch: the Tf-KD_self teacher.
        """
    ),
    code(
        """
        def build_student():
            return models.get_model(
                MODEL, ds.num_classes, input_shape=ds.input_shape, width=WIDTH
            )


        def fit(distiller, extra_callbacks=()):
            distiller.compile(
                optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"]
            )
            stop = keras.callbacks.EarlyStopping(
                monitor="val_accuracy", patience=4, restore_best_weights=True
            )
            return distiller.fit(
                train,
                validation_data=test,
                epochs=EPOCHS,
                callbacks=[stop, *extra_callbacks],
                verbose=0 if SMOKE else 2,
            )


        histories = {}

        keras.utils.set_random_seed(SEED)
        snapshot = callbacks.SelfTeacherSnapshot(monitor="val_accuracy")
        plain = recipes.baseline(build_student())
        histories["plain"] = fit(plain, [snapshot])
        """
    ),
    code(
        """
        keras.utils.set_random_seed(SEED)
        tfkd_reg = recipes.tfkd_reg(
            build_student(),
            num_classes=ds.num_classes,
            alpha=0.1,
            temperature=20.0,
            multiplier=1.0,  # the paper's 100, on the batch-mean KL
        )
        histories["Tf-KD_reg"] = fit(tfkd_reg)
        """
    ),
    code(
        """
        keras.utils.set_random_seed(SEED)
        teacher = snapshot.teacher  # frozen copy of the plain model's best epoch
        tfkd_self = recipes.tfkd_self(
            build_student(),
            teacher,
            alpha=0.95,
            temperature=6.0,
            multiplier=0.5,  # the paper's 50, on the batch-mean KL
        )
        histories["Tf-KD_self"] = fit(tfkd_self)
        """
    ),
    md(
        """
        ## 3. Curves and results

        Besides `loss`, a Distiller logs its two terms, `hard_loss` (the
        cross-entropy on the labels) and `soft_loss` (the KL to the teacher),
        also on the validation data. `val_hard_loss` is the test cross-entropy
        of every method, so the three curves are comparable.
        """
    ),
    code(
        """
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name, history in histories.items():
            epochs = np.arange(1, len(history.history["val_accuracy"]) + 1)
            axes[0].plot(epochs, history.history["val_accuracy"], "o-", label=name)
            axes[1].plot(epochs, history.history["val_hard_loss"], "o-", label=name)
        axes[0].set(xlabel="epoch", ylabel="test accuracy", title="Accuracy")
        axes[1].set(xlabel="epoch", ylabel="test cross-entropy", title="Hard loss")
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)
        plt.tight_layout()
        plt.show()

        best = {
            name: 100 * max(h.history["val_accuracy"]) for name, h in histories.items()
        }
        for name, accuracy in best.items():
            gain = accuracy - best["plain"]
            print(f"{name:<11} best test accuracy {accuracy:6.2f}%  ({gain:+.2f})")
        """
    ),
    md(
        """
        ## 4. Save the distilled student and load it back

        The Distiller is only a training wrapper: `distiller.student` is the
        plain Keras model to deploy. Its `.keras` file loads without
        keras-tfkd and without the teacher. (`callbacks.StudentCheckpoint`
        does the same during `fit`, for the best epoch.) The file goes to a new
        temporary folder, so running the notebook leaves nothing beside it;
        set `SAVE_DIR` to a folder of yours to keep it.
        """
    ),
    code(
        """
        import tempfile
        from pathlib import Path

        SAVE_DIR = Path(tempfile.mkdtemp(prefix="tfkd_quickstart_"))
        path = SAVE_DIR / "tfkd_reg_student.keras"
        tfkd_reg.student.save(path)
        print(f"saved the student to {path}")
        reloaded = keras.saving.load_model(path)

        before = tfkd_reg.student.predict(test, verbose=0)
        after = reloaded.predict(test, verbose=0)
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
        accuracy = 100 * np.mean(after.argmax(axis=-1) == ds.y_test)
        print(
            f"reloaded {path}: {reloaded.count_params()} parameters, "
            f"test accuracy {accuracy:.2f}% (same predictions as before saving)"
        )
        """
    ),
    md(
        """
        ## Next

        * `02_teacher_free_cifar100.ipynb`: the paper's full CIFAR-100 protocol
          (reference optimiser, schedule and augmentation) for one student.
        * `03_kd_as_label_smoothing.ipynb`: Re-KD, De-KD and why KD behaves
          like label smoothing.
        """
    ),
)


# --------------------------------------------------------------------------
# 02: the reference protocol on CIFAR-100
# --------------------------------------------------------------------------

CIFAR = "02_teacher_free_cifar100.ipynb"
CIFAR_TITLE = "Teacher-free KD on CIFAR-100: the reference protocol"
CIFAR_SUMMARY = (
    "Reproduce one row of the paper's CIFAR-100 tables for one student "
    "(ResNet18 by default, or MobileNetV2): baseline, Tf-KD_self, Tf-KD_reg and "
    "label smoothing (LSR), each with the reference optimiser, schedule and "
    "augmentation, 200 epochs, next to the published numbers."
)
CIFAR_RUN = "about 10 hours on a T4, about 3 hours on an A100 (estimate, not measured)"
CIFAR_DETAIL = (
    "four 200-epoch runs of ResNet18 on 50,000 images, Tf-KD_self also running "
    "its teacher forward; MobileNetV2 takes about as long"
)

CIFAR_CELLS = (
    header(
        CIFAR_TITLE,
        CIFAR,
        CIFAR_SUMMARY,
        CIFAR_RUN,
        CIFAR_DETAIL,
        """
        Use a GPU runtime (*Runtime > Change runtime type*). A full run is
        longer than a free Colab session: point `OUT_DIR` at a Google Drive
        folder (`from google.colab import drive; drive.mount("/content/drive")`)
        and rerun the notebook after a disconnect — finished runs are read back
        from their result files and skipped (an interrupted run starts over).
        """,
    ),
    SETUP,
    md(
        """
        ## 1. The experiments, as data

        Every published setting is an entry of `keras_tfkd.experiments`:
        `experiments.get("tfkd_reg/resnet18")` holds its method, student,
        `alpha`, `T`, `multiplier`, batch size, epochs and published accuracy.
        `Experiment.build(student, teacher)` returns the `Distiller` with the
        reference loss (at 100 classes exactly the reference code's, whose
        KL divides by the number of classes; the registry stores it as the
        batch-mean KL with the multiplier over 100).

        `EPOCHS` shortens the runs (the decay milestones 60/120/160 of 200
        scale with it), at the price of lower accuracies than the paper's.

        In smoke mode the same code runs on an offline stand-in: a slice of
        scikit-learn's `digits`, the small `cnn_tiny` model and one epoch
        (the batch-mean KL keeps the hyper-parameters' meaning at 10 classes;
        `Experiment.kl_note` prints the KL term's weight). Its accuracies mean nothing.
        """
    ),
    code(
        """
        import json
        import math
        import tempfile
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np

        from keras_tfkd import callbacks, data, experiments, models, schedules

        MODEL = "resnet18"  # or "mobilenet_v2" (also "shufflenet_v2", "googlenet")
        EPOCHS = 200  # the reference; a shorter run scales the decay milestones
        SEED = 230  # the reference code's seed
        # Results and checkpoints: a fixed folder under the system's temporary
        # directory, so a rerun on the same machine skips the finished runs.
        # Point it at a Google Drive folder to keep them across Colab sessions.
        OUT_DIR = Path(tempfile.gettempdir()) / f"tfkd_cifar100_{MODEL}"

        IDS = {
            "baseline": f"baseline/{MODEL}",
            "Tf-KD_self": f"tfkd_self/{MODEL}_from_{MODEL}",
            "Tf-KD_reg": f"tfkd_reg/{MODEL}",
            "LSR": f"lsr/{MODEL}",
        }
        published = {label: experiments.get(exp_id) for label, exp_id in IDS.items()}

        if SMOKE:
            ds = data.load("digits", limit=(256, 128))  # offline stand-in
            runs = {
                label: exp.replace(
                    student="cnn_tiny",
                    dataset="digits",
                    epochs=1,
                    batch_size=64,
                )
                for label, exp in published.items()
            }
            OUT_DIR = Path(tempfile.mkdtemp(prefix="tfkd_smoke_"))
        else:
            ds = data.load("cifar100")  # downloaded by keras.datasets on first use
            runs = {
                label: exp.replace(epochs=EPOCHS) for label, exp in published.items()
            }
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        print(f"results and checkpoints go to {OUT_DIR}")

        print(ds)
        for label, exp in runs.items():
            print(f"{label:<11}", exp.describe())
            print(" " * 12, exp.kl_note(ds.num_classes))
        """
    ),
    md(
        """
        ## 2. One run

        * data: `data.pipeline(ds, "train", batch_size, seed=230)` applies the
          reference augmentation (4-pixel pad + random crop, horizontal flip,
          rotation of up to 15 degrees, CIFAR-100 mean/std normalisation);
        * optimiser: `schedules.reference_optimizer` — SGD with momentum 0.9 and
          coupled weight decay 5e-4 (as `torch.optim.SGD`), `lr = 0.1 * batch /
          128`, one warm-up epoch stepped per batch, then x0.2 at epochs 60,
          120 and 160;
        * reported number: the best test accuracy over the epochs, as in the
          paper. `callbacks.StudentCheckpoint` keeps the student of that epoch,
          and `keras.callbacks.CSVLogger` the curves, in `OUT_DIR`.
        """
    ),
    code(
        """
        test = data.pipeline(ds, "test", 500)


        def run(label, exp, teacher=None):
            result_file = OUT_DIR / f"{label}.json"
            if result_file.exists():  # finished earlier (e.g. before a disconnect)
                result = json.loads(result_file.read_text())
                print(f"{label}: read back {result_file}")
                return result
            keras.utils.set_random_seed(SEED)
            student = models.get_model(
                exp.student, ds.num_classes, input_shape=ds.input_shape
            )
            distiller = exp.build(student, teacher)
            train = data.pipeline(ds, "train", exp.batch_size, seed=SEED)
            steps_per_epoch = math.ceil(ds.num_examples("train") / exp.batch_size)
            distiller.compile(
                optimizer=schedules.reference_optimizer(
                    exp.student, exp.batch_size, steps_per_epoch, exp.epochs
                ),
                metrics=["accuracy"],
            )
            history = distiller.fit(
                train,
                validation_data=test,
                epochs=exp.epochs,
                callbacks=[
                    keras.callbacks.CSVLogger(str(OUT_DIR / f"{label}.csv")),
                    callbacks.StudentCheckpoint(
                        str(OUT_DIR / f"{label}_best.keras"),
                        monitor="val_accuracy",
                        save_best_only=True,
                    ),
                ],
                verbose=0 if SMOKE else 2,
            )
            accuracy = [100 * a for a in history.history["val_accuracy"]]
            result = {
                "id": exp.id,
                "best": max(accuracy),
                "best_epoch": int(np.argmax(accuracy)) + 1,
                "final": accuracy[-1],
                "curve": accuracy,
                "epochs": exp.epochs,
                "hyperparameters": exp.hyperparameters(),
                "kl": exp.kl_note(ds.num_classes),
                "backend": keras.backend.backend(),
            }
            result_file.write_text(json.dumps(result, indent=1))
            print(
                f"{label}: best {result['best']:.2f}% at epoch {result['best_epoch']}"
            )
            return result
        """
    ),
    md(
        """
        ## 3. Baseline, then Tf-KD_self from its best checkpoint

        The Tf-KD_self teacher is the best checkpoint of the normal run of the
        same architecture; the student starts from a fresh initialisation.
        The `Distiller` freezes the teacher and runs it in inference mode.
        """
    ),
    code(
        """
        results = {"baseline": run("baseline", runs["baseline"])}

        teacher = keras.saving.load_model(str(OUT_DIR / "baseline_best.keras"))
        results["Tf-KD_self"] = run("Tf-KD_self", runs["Tf-KD_self"], teacher)
        """
    ),
    md(
        """
        ## 4. Tf-KD_reg and label smoothing

        Neither needs a teacher network: Tf-KD_reg's virtual teacher is built
        from the labels at every step, and LSR is a cross-entropy on smoothed
        labels (`1 - eps` on the true class, `eps / (K - 1)` elsewhere).
        """
    ),
    code(
        """
        results["Tf-KD_reg"] = run("Tf-KD_reg", runs["Tf-KD_reg"])
        results["LSR"] = run("LSR", runs["LSR"])
        """
    ),
    md(
        """
        ## 5. Results beside the paper

        "paper" is the published CIFAR-100 top-1 accuracy of the same
        experiment (from the registry, i.e. docs/paper.md); gains are over the
        baseline of the same column. One seed per method: differences of a
        few tenths of a point can be run-to-run noise.
        """
    ),
    code(
        """
        if SMOKE:
            print("SMOKE run: digits stand-in, 1 epoch; not comparable to the paper.")
        base, paper_base = (
            results["baseline"]["best"],
            published["baseline"].published_accuracy,
        )
        print(f"{'method':<11} {'ours':>7} {'gain':>7}   {'paper':>7} {'gain':>7}")
        for label, result in results.items():
            paper = published[label].published_accuracy
            paper_cols = (
                f"{paper:7.2f} {paper - paper_base:+7.2f}"
                if paper is not None
                else f"{'n/a':>7} {'':>7}"
            )
            print(
                f"{label:<11} {result['best']:7.2f} {result['best'] - base:+7.2f}"
                f"   {paper_cols}"
            )

        fig, ax = plt.subplots(figsize=(7, 4))
        for label, result in results.items():
            ax.plot(
                np.arange(1, len(result["curve"]) + 1), result["curve"], label=label
            )
        ax.set(
            xlabel="epoch", ylabel="test accuracy (%)", title=f"{MODEL} on {ds.name}"
        )
        ax.grid(alpha=0.3)
        ax.legend()
        plt.show()
        """
    ),
    md(
        """
        ## The same, packaged

        `keras_tfkd.runs.train(exp, ds, seed=230, output_dir=...)` runs
        one experiment with this protocol, trains and caches the teacher of
        kd/rekd/dekd/tfkd_self itself, and records the results; from a shell,
        `keras-tfkd run --experiment tfkd_reg/resnet18` does the same
        (`keras-tfkd list experiments` lists every published setting).
        """
    ),
)


# --------------------------------------------------------------------------
# 03: KD as label smoothing
# --------------------------------------------------------------------------

LSR = "03_kd_as_label_smoothing.ipynb"
LSR_TITLE = "KD is a learned label smoothing: Re-KD, De-KD and soft targets"
LSR_SUMMARY = (
    "The paper's analysis on small data: a weak student can teach a strong "
    "model (Re-KD), a barely trained teacher still helps (De-KD); the soft "
    "targets of a real teacher, a poorly trained teacher, the virtual teacher "
    "of Tf-KD_reg and label smoothing side by side; and what the temperature "
    "does to the virtual teacher."
)
LSR_RUN = "about 6 minutes on a T4 (estimate, not measured)"
LSR_DETAIL = (
    "five short runs of two small CNNs (at most 10 epochs each) on Fashion-MNIST, "
    "plus about a minute to install"
)

LSR_CELLS = (
    header(LSR_TITLE, LSR, LSR_SUMMARY, LSR_RUN, LSR_DETAIL),
    SETUP,
    md(
        """
        ## 1. Re-KD and De-KD on small data

        Two architectures from `keras_tfkd.models`: a weak `cnn_tiny` and a
        stronger `cnn_small`.

        * **Re-KD** (reversed KD): the trained *weak* model teaches the
          *strong* one (the paper: MobileNetV2 teaching ResNet18).
        * **De-KD** (defective KD): a strong model stopped after a few
          batches, far less accurate than the student, teaches the weak one
          (the paper: ResNet18 after one epoch, 15.48%, teaching MobileNetV2).

        The hyper-parameters come from the paper's experiments of the same
        kind (`experiments.get(...)`), carried to our models and to 10 classes
        by `Experiment.replace` and `Experiment.build`. Smoke mode uses a slice
        of `digits` and one epoch.
        """
    ),
    code(
        """
        import matplotlib.pyplot as plt
        import numpy as np

        from keras_tfkd import (
            callbacks,
            data,
            experiments,
            losses,
            models,
            recipes,
            teachers,
        )

        SEED = 230
        DATASET = "digits" if SMOKE else "fashion_mnist"
        EPOCHS = 1 if SMOKE else 10
        BATCH_SIZE = 64 if SMOKE else 128
        POOR_STEPS = 2 if SMOKE else 10  # batches of training for the poor teacher
        WIDTHS = (
            {"cnn_tiny": 4, "cnn_small": 8}
            if SMOKE
            else {"cnn_tiny": 8, "cnn_small": 32}
        )
        WEAK, STRONG = "cnn_tiny", "cnn_small"

        ds = data.load(DATASET, limit=(384, 192) if SMOKE else None)
        K = ds.num_classes
        train = data.pipeline(ds, "train", BATCH_SIZE, seed=SEED)
        test = data.pipeline(ds, "test", 256)
        y_test = ds.y_test
        print(ds)


        def build(name):
            keras.utils.set_random_seed(SEED)
            return models.get_model(
                name, K, input_shape=ds.input_shape, width=WIDTHS[name]
            )


        def fit(distiller, epochs=EPOCHS, steps_per_epoch=None):
            distiller.compile(
                optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"]
            )
            history = distiller.fit(
                train,
                validation_data=test,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                verbose=0,
            )
            return 100 * max(history.history["val_accuracy"])


        def as_teacher(distiller):
            return callbacks.freeze_copy(distiller.student)


        accuracy = {}
        weak_run = recipes.baseline(build(WEAK))
        accuracy["weak (baseline)"] = fit(weak_run)
        strong_run = recipes.baseline(build(STRONG))
        accuracy["strong (baseline)"] = fit(strong_run)
        poor_run = recipes.baseline(build(STRONG))
        accuracy["poor teacher"] = fit(poor_run, epochs=1, steps_per_epoch=POOR_STEPS)
        weak, strong, poor = (
            as_teacher(weak_run),
            as_teacher(strong_run),
            as_teacher(poor_run),
        )
        """
    ),
    code(
        """
        # Re-KD: the weak model teaches the strong one.
        ours = dict(dataset=DATASET, epochs=EPOCHS)
        rekd = experiments.get("rekd/resnet18_from_mobilenet_v2").replace(
            student=STRONG, teacher=WEAK, **ours
        )
        accuracy["strong <- weak (Re-KD)"] = fit(rekd.build(build(STRONG), weak))

        # De-KD: the poorly trained strong model teaches the weak one.
        dekd = experiments.get("dekd/mobilenet_v2_from_resnet18").replace(
            student=WEAK, teacher=STRONG, **ours
        )
        accuracy["weak <- poor (De-KD)"] = fit(dekd.build(build(WEAK), poor))

        for exp in (rekd, dekd):
            print(f"{exp.id}: alpha={exp.alpha:g}, T={exp.temperature:g}")
            print("   ", exp.kl_note(K))
        print()
        for name, value in accuracy.items():
            print(f"{name:<24} {value:6.2f}%")

        # (ours: teacher, student baseline, distilled; the paper's experiments)
        comparisons = {
            "Re-KD": (
                ("weak (baseline)", "strong (baseline)", "strong <- weak (Re-KD)"),
                experiments.get("baseline/mobilenet_v2").published_accuracy,
                "baseline/resnet18",
                "rekd/resnet18_from_mobilenet_v2",
            ),
            "De-KD": (
                ("poor teacher", "weak (baseline)", "weak <- poor (De-KD)"),
                experiments.get("dekd/mobilenet_v2_from_resnet18").teacher_accuracy,
                "baseline/mobilenet_v2",
                "dekd/mobilenet_v2_from_resnet18",
            ),
        }
        print()
        print(f"{'':<12} {'teacher':>8} {'student':>8} {'distilled':>9} {'gain':>6}")
        for name, (ours, paper_teacher, paper_base, paper_kd) in comparisons.items():
            teacher_acc, base, distilled = (accuracy[key] for key in ours)
            paper = [paper_teacher] + [
                experiments.get(i).published_accuracy for i in (paper_base, paper_kd)
            ]
            for who, (t, b, d) in (
                ("ours", (teacher_acc, base, distilled)),
                ("paper", paper),
            ):
                print(
                    f"{name + ' ' + who:<12} {t:8.2f} {b:8.2f} {d:9.2f} {d - b:+6.2f}"
                )
        """
    ),
    md(
        """
        ## 2. Soft targets side by side

        What does each teacher ask the student to predict? For every test
        image, the soft target of

        * the **real teacher** (the trained strong model),
        * the **poor teacher** (the strong model after a few batches),
        * the **virtual teacher** of Tf-KD_reg (`teachers.VirtualTeacher`:
          `a = 0.99` on the true class, `(1 - a)/(K - 1)` elsewhere, softened
          as in the reference code: `softmax(p_d / T)`),
        * **label smoothing** (`losses.label_smoothing_targets`, `eps = 0.1`;
          it has no temperature),

        summarised by the probability on the true class and the entropy
        (uniform: `1/K` and `log K`). As the temperature grows, every teacher
        tends to the uniform distribution `u` — the distribution label
        smoothing mixes into the labels. (The LSR target already contains the
        label; a KD soft target is mixed with the label by the loss,
        `(1 - alpha) CE + alpha KL`.)
        """
    ),
    code(
        """
        def softmax(logits, temperature=1.0):
            z = np.asarray(logits, dtype="float64") / temperature
            z = z - z.max(axis=-1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=-1, keepdims=True)


        def summary(p):
            true_prob = p[np.arange(len(y_test)), y_test].mean()
            entropy = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=-1).mean()
            return true_prob, entropy


        logits = {
            "real teacher": strong.predict(test, verbose=0),
            "poor teacher": poor.predict(test, verbose=0),
            "virtual teacher": keras.ops.convert_to_numpy(
                teachers.VirtualTeacher(K, correct_prob=0.99)(None, labels=y_test)
            ),
        }
        lsr_targets = keras.ops.convert_to_numpy(
            losses.label_smoothing_targets(y_test, K, 0.1)
        )

        temperatures = np.geomspace(1, 64, 25)
        curves = {
            name: np.array([summary(softmax(z, t)) for t in temperatures])
            for name, z in logits.items()
        }
        lsr_true, lsr_entropy = summary(lsr_targets)

        # The temperature of the Re-KD/De-KD runs and of Tf-KD_reg (ResNet18).
        T_KD = 20.0
        sample = 0  # the test image shown on the right
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        for name, curve in curves.items():
            axes[0].plot(temperatures, curve[:, 0], label=name)
            axes[1].plot(temperatures, curve[:, 1], label=name)
        for ax, value, uniform, title in (
            (axes[0], lsr_true, 1 / K, "probability on the true class"),
            (axes[1], lsr_entropy, np.log(K), "entropy (nats)"),
        ):
            ax.axhline(value, color="k", label="label smoothing (eps=0.1)")
            ax.axhline(uniform, color="gray", ls="--", label="uniform")
            ax.axvline(T_KD, color="gray", ls=":", label=f"T = {T_KD:g}")
            ax.set(xscale="log", xlabel="temperature T", title=title)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize="small")
        width = 0.2
        classes = np.arange(K)
        bars = {name: softmax(z[sample : sample + 1])[0] for name, z in logits.items()}
        bars["label smoothing"] = lsr_targets[sample]
        for i, (name, p) in enumerate(bars.items()):
            axes[2].bar(classes + (i - 1.5) * width, p, width, label=name)
        axes[2].set(
            xlabel="class",
            ylabel="probability",
            xticks=classes,
            title=f"test image {sample} (label {y_test[sample]}), T = 1",
        )
        axes[2].legend()
        plt.tight_layout()
        plt.show()

        print(f"{'soft target':<16} {'T':>4} {'p(true)':>8} {'entropy':>8}")
        for name, z in logits.items():
            for t in (1.0, T_KD):
                true_prob, entropy = summary(softmax(z, t))
                print(f"{name:<16} {t:4g} {true_prob:8.4f} {entropy:8.4f}")
        print(f"{'label smoothing':<16} {'-':>4} {lsr_true:8.4f} {lsr_entropy:8.4f}")
        print(f"{'uniform':<16} {'-':>4} {1 / K:8.4f} {np.log(K):8.4f}")
        """
    ),
    md(
        """
        ## 3. The temperature and the virtual teacher

        In the reference code Tf-KD_reg softens the virtual teacher's
        *probabilities* as if they were logits: `softmax(p_d / T)`. The
        probability left on the true class is then

            exp(a/T) / (exp(a/T) + (K-1) exp((1-a)/((K-1) T)))

        which tends to `1/K` as `T` grows. docs/paper.md quotes about 0.0110,
        0.0105 and 0.01025 for `K = 100` at `T = 10, 20, 40` — computed below
        with the toolkit's `VirtualTeacher`, not copied.
        """
    ),
    code(
        """
        def virtual_true_prob(num_classes, temperature, correct_prob=0.99):
            z = keras.ops.convert_to_numpy(
                teachers.VirtualTeacher(num_classes, correct_prob)(
                    None, labels=np.array([0])
                )
            )
            return softmax(z, temperature)[0, 0]


        grid = np.geomspace(1, 100, 60)
        fig, ax = plt.subplots(figsize=(7, 4))
        for num_classes in (10, 100):
            p = [virtual_true_prob(num_classes, t) for t in grid]
            (line,) = ax.plot(grid, p, label=f"K = {num_classes}")
            ax.axhline(1 / num_classes, color=line.get_color(), ls="--", lw=0.8)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="temperature T",
            ylabel="probability on the true class",
            title="Virtual teacher softmax(p_d / T); dashed: 1/K",
        )
        ax.grid(alpha=0.3)
        ax.legend()
        plt.show()

        for num_classes in (10, 100):
            for t in (1, 10, 20, 40):
                p = virtual_true_prob(num_classes, t)
                print(f"K={num_classes:<3} T={t:<2} p(true)={p:.5f}", end="  ")
                print(f"(uniform {1 / num_classes:.5f})")
        """
    ),
    md(
        """
        ## What to take away

        * Re-KD and De-KD: compare each distilled student with its own
          baseline above. In the paper both help on CIFAR-100 even though the
          teacher is weaker than the student — which is hard to explain by
          "dark knowledge" about class similarities alone.
        * At the KD temperature the soft targets of a real teacher, of a poor
          teacher and of the virtual teacher are all close to the uniform
          distribution `u`. KD's loss `(1 - alpha) CE + alpha KL(p_t || p_s)`
          then has the shape of label smoothing's `(1 - eps) CE + eps KL(u ||
          p_s)` (up to a constant): KD acts as a *learned* label smoothing,
          and label smoothing is KD from a virtual, uniform teacher
          (`teachers.UniformTeacher`).
        * Hence Tf-KD: keep the regularisation, drop the teacher
          (`recipes.tfkd_reg`), or let the model teach itself
          (`recipes.tfkd_self`). See `02_teacher_free_cifar100.ipynb` for the
          full protocol.
        """
    ),
)


# --------------------------------------------------------------------------
# 04: distilling a KerasHub causal language model
# --------------------------------------------------------------------------

CAUSAL_LM = "04_distil_causal_lm.ipynb"
CAUSAL_LM_TITLE = "Distil a KerasHub causal language model"
CAUSAL_LM_SUMMARY = (
    "Token-level distillation of a small GPT-2 (KerasHub `GPT2CausalLM`, built "
    "from a config) into a smaller one on byte-level Shakespeare: baseline, "
    "KD, Tf-KD_reg (a virtual teacher per token) and the generalized JSD, "
    "every term a mean over the real tokens (padding masked); held-out "
    "perplexity and next-token accuracy, text generation, and the student "
    "saved as a `.keras` file."
)
CAUSAL_LM_RUN = "about 8 minutes on a T4 (estimate, not measured)"
CAUSAL_LM_DETAIL = (
    "a 4-layer teacher and four 2-layer students, 8 epochs each on 1.1 MB of "
    "text, plus about a minute to install"
)

CAUSAL_LM_CELLS = (
    header(
        CAUSAL_LM_TITLE,
        CAUSAL_LM,
        CAUSAL_LM_SUMMARY,
        CAUSAL_LM_RUN,
        CAUSAL_LM_DETAIL,
        """
        Needs KerasHub (`keras-hub`, preinstalled on Colab; the second code
        cell installs it otherwise). The models are built from a config, so
        nothing but the text is downloaded; a GPU runtime helps.
        """,
    ),
    SETUP,
    md(
        """
        ## 1. Token-level distillation, and why padding must not count

        A causal language model predicts, at every position `l` of a
        sequence, a distribution over the next token: its logits are
        `(N, L, V)` (batch, tokens, vocabulary). Distilling it token by token
        means doing at every position what KD does for one image:

        * **KD**: `(1 - alpha) CE(y_l, p_S) + alpha T^2 KL(p_T || p_S)`, the
          student's next-token distribution `p_S` pulled toward the
          teacher's `p_T` (both softened by `T`), `y_l` the true next token.
        * **Tf-KD_reg**: no teacher network. The *virtual teacher* of a token
          puts `a = 0.99` on its true next token and spreads the rest evenly
          over the vocabulary, softened by `T`; `recipes.tfkd_reg(student,
          V, ...)` builds it from the labels at every step.
        * Other token-level divergences replace the KL: `losses.ReverseKL`
          (MiniLLM), `losses.GeneralizedJSD` (GKD), `losses.SkewKL`
          (DistiLLM), `losses.TotalVariation`.

        Sequences of different lengths are padded to one length `L` in a
        batch. A padded position has no next token: if it counts, the model
        learns to predict padding, and a loss divided by every position
        `N * L` (Keras's default reduction) gets smaller the more padding a
        batch holds. The `Distiller` takes the padding mask as the
        `sample_weight` `(N, L)` and makes **every term a mean over the real
        tokens**, `sum(w * loss) / sum(w)`, for the hard and the soft losses
        alike.
        """
    ),
    md(
        """
        ## 2. A byte-level tokenizer and the data

        One token per UTF-8 byte (`V = 256`; byte 0 never occurs in text, so
        id 0 pads). The text is cut into paragraphs, each paragraph into
        pieces of `L + 1` tokens, the last piece of a paragraph padded; as
        KerasHub's `CausalLMPreprocessor` does, the model reads
        `tokens[:-1]`, the labels are `tokens[1:]` (the next token) and the
        `sample_weight` is the padding mask of the labels. Every fifth
        paragraph is held out.

        The full run downloads Shakespeare (1.1 MB, the text of TensorFlow's
        text-generation tutorial); smoke mode uses the few lines written
        below instead and runs offline.
        """
    ),
    code(
        r"""
        import math
        from pathlib import Path

        import numpy as np

        try:
            import keras_hub
        except ImportError:  # not a dependency of keras-tfkd
            pip = [sys.executable, "-m", "pip", "install", "-q", "keras-hub"]
            subprocess.check_call(pip)
            importlib.invalidate_caches()
            import keras_hub

        from keras_tfkd import Distiller, losses, recipes, teachers

        SEED = 230
        VOCAB = 256  # one token per byte
        PAD = 0  # the id of padding (byte 0, never in text)
        SEQ_LEN = 32 if SMOKE else 128  # tokens the model reads per sequence
        BATCH_SIZE = 8 if SMOKE else 64
        TEACHER_EPOCHS, STUDENT_EPOCHS = (2, 1) if SMOKE else (8, 8)
        LEARNING_RATE = 3e-3 if SMOKE else 1e-3
        # Dropout roughly doubles the time JAX takes to compile a training step:
        # none in smoke mode, where compiling takes longer than training.
        DROPOUT = 0.0 if SMOKE else 0.1

        if SMOKE:  # a few lines written for this notebook: offline, seconds
            TEXT = "\n\n".join(
                [
                    "Knowledge distillation trains a small model, the student, "
                    "to imitate a larger one, the teacher.",
                    "A language model predicts the next token of a text from the "
                    "tokens before it. Here a token is one byte, so the model "
                    "spells words letter by letter.",
                    "At every position the teacher gives a whole distribution "
                    "over the next byte, and the student learns from it as well "
                    "as from the byte that really comes next.",
                    "Short pieces are padded to a common length.",
                    "Padding is not text: it must count neither in the loss nor "
                    "in the perplexity.",
                    "A virtual teacher needs no network: it puts most of its "
                    "weight on the true next byte and spreads the rest evenly.",
                    "This text is tiny, and so are the models.",
                    "A run this short shows how the pieces fit together; it says "
                    "nothing about which method is better.",
                    "For that, train longer on more text and compare seeds.",
                    "Every term of the loss is a mean over the real tokens.",
                ]
            )
        else:
            TEXT = Path(
                keras.utils.get_file(
                    "shakespeare.txt",
                    origin="https://storage.googleapis.com/download.tensorflow.org/"
                    "data/shakespeare.txt",
                )
            ).read_text(encoding="utf-8")


        def encode(text):
            # The byte-level tokenizer: text -> token ids.
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype("int32")


        def decode(ids):
            # Token ids -> text (padding dropped).
            return bytes(int(i) for i in ids if i != PAD).decode("utf-8", "replace")


        def sequences(paragraphs):
            # (x, y, sample_weight) of CausalLM training, as KerasHub builds them.
            rows, lengths = [], []
            for paragraph in paragraphs:
                ids = encode(paragraph + "\n")
                for start in range(0, len(ids) - 1, SEQ_LEN):
                    piece = ids[start : start + SEQ_LEN + 1]
                    padding = SEQ_LEN + 1 - len(piece)
                    rows.append(np.pad(piece, (0, padding), constant_values=PAD))
                    lengths.append(len(piece))
            tokens = np.stack(rows).astype("int32")
            real = np.arange(SEQ_LEN + 1)[None] < np.array(lengths)[:, None]
            x = {"token_ids": tokens[:, :-1], "padding_mask": real[:, :-1]}
            return x, tokens[:, 1:], real[:, 1:].astype("float32")


        paragraphs = [p.strip() for p in TEXT.split("\n\n") if p.strip()]
        x_train, y_train, w_train = sequences(
            [p for i, p in enumerate(paragraphs) if i % 5 != 4]
        )
        x_test, y_test, w_test = sequences(paragraphs[4::5])
        # Whole batches only: on JAX another batch shape compiles the step again.
        keep = len(y_train) // BATCH_SIZE * BATCH_SIZE
        x_train = {key: value[:keep] for key, value in x_train.items()}
        y_train, w_train = y_train[:keep], w_train[:keep]

        for name, w in (("train", w_train), ("held-out", w_test)):
            print(
                f"{name:<8} {len(w):6d} sequences of {SEQ_LEN} tokens, "
                f"{int(w.sum()):8d} real tokens, padding {100 * (1 - w.mean()):.1f}%"
            )
        print("first training sequence:", repr(decode(x_train["token_ids"][0])))
        """
    ),
    md(
        """
        ## 3. The teacher: a GPT-2 from a config

        `keras_hub.models.GPT2Backbone(...)` builds a GPT-2 of any size with
        fresh weights (no download), and `GPT2CausalLM(backbone,
        preprocessor=None)` adds the language-model head: it reads
        `{"token_ids", "padding_mask"}` and returns logits `(N, L, V)`.
        `recipes.baseline` trains it with the cross-entropy alone, a mean
        over the real tokens.

        The cell then compares three reductions of the teacher's held-out
        cross-entropy: the mean over the real tokens (computed here in NumPy
        and by the `Distiller`), Keras's default `"sum_over_batch_size"`
        (the same sum divided by every position, padding included), and the
        mean over every position with padding taken as targets (what training
        without the mask would optimise).
        """
    ),
    code(
        """
        # (layers, width). Smoke mode keeps one width, so both models' weights
        # share their shapes (fewer initialisers to compile).
        TEACHER, STUDENT = ((2, 32), (1, 32)) if SMOKE else ((4, 256), (2, 128))


        def gpt2(size, seed):
            num_layers, hidden_dim = size
            keras.utils.set_random_seed(seed)
            backbone = keras_hub.models.GPT2Backbone(
                vocabulary_size=VOCAB,
                num_layers=num_layers,
                num_heads=max(2, hidden_dim // 64),
                hidden_dim=hidden_dim,
                intermediate_dim=4 * hidden_dim,
                dropout=DROPOUT,
                max_sequence_length=SEQ_LEN,
            )
            return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


        def train(distiller, epochs):
            distiller.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE))
            history = distiller.fit(
                x_train,
                y_train,
                sample_weight=w_train,  # the padding mask of the labels
                batch_size=BATCH_SIZE,
                epochs=epochs,
                verbose=0 if SMOKE else 2,
            )
            return history.history


        def token_losses(model):
            # Held-out logits (N, L, V) and cross-entropy per position (N, L).
            logits = keras.ops.convert_to_numpy(model.predict(x_test, verbose=0))
            z = logits - logits.max(axis=-1, keepdims=True)
            log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
            nll = -np.take_along_axis(log_p, y_test[..., None], axis=-1)[..., 0]
            return logits, nll, log_p.argmax(axis=-1) == y_test


        teacher = gpt2(TEACHER, seed=SEED)
        teacher_run = recipes.baseline(teacher)
        history = train(teacher_run, TEACHER_EPOCHS)
        print(
            f"teacher: {teacher.count_params()} parameters, "
            f"train loss {history['loss'][-1]:.4f}"
        )

        logits, nll, _ = token_losses(teacher)
        token_mean = (nll * w_test).sum() / w_test.sum()
        distiller_loss = teacher_run.compute_loss(
            x=x_test,
            y=y_test,
            y_pred=keras.ops.convert_to_tensor(logits),
            sample_weight=w_test,
        )
        keras_default = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            y_test, logits, sample_weight=w_test
        )
        print(f"held-out padding: {100 * (1 - w_test.mean()):.2f}% of the positions")
        print(f"mean over the real tokens (NumPy)     {token_mean:.5f}")
        print(f"the Distiller's loss (token mean)     {float(distiller_loss):.5f}")
        print(f"Keras's default (sum_over_batch_size) {float(keras_default):.5f}")
        print(f"every position, padding as targets    {nll.mean():.5f}")
        """
    ),
    md(
        """
        ## 4. Four students

        The same smaller GPT-2, from the same initial weights, trained four
        ways (each a `Distiller`, compiled and fitted like any Keras model,
        with the padding mask as `sample_weight`):

        * **baseline**: `recipes.baseline`, the cross-entropy alone;
        * **KD**: `recipes.kd(student, teacher, alpha=0.5, temperature=2.0)`,
          the forward KL to the teacher at every token;
        * **Tf-KD_reg**: `recipes.tfkd_reg(student, V, alpha=0.1,
          temperature=20.0)`, `alpha` and `T` of the paper's ResNet18
          setting, no teacher network;
        * **GJSD**: `Distiller(student=..., teacher=...,
          soft_loss=losses.GeneralizedJSD(beta=0.5), alpha=0.5)`, GKD's
          generalized Jensen-Shannon divergence between the two
          distributions at every token.

        As in the reference code, Tf-KD_reg softens the virtual teacher's
        probabilities as logits, `softmax(p_d / T)`: over 256 tokens it puts
        little more than `1/V` on the true token (printed below), so at the
        token level it acts much like label smoothing of weight `alpha`.
        """
    ),
    code(
        """
        def softmax(z, temperature=1.0):
            z = np.asarray(z, dtype="float64") / temperature
            e = np.exp(z - z.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)


        virtual = teachers.VirtualTeacher(VOCAB, correct_prob=0.99)
        p_d = keras.ops.convert_to_numpy(virtual(None, labels=np.array([0])))
        p_true = softmax(p_d, 20.0)[0, 0]
        print(
            f"virtual teacher at T=20: p(true token)={p_true:.6f} "
            f"(uniform {1 / VOCAB:.6f})"
        )


        def student():
            return gpt2(STUDENT, seed=SEED + 1)  # the same weights in every run


        distillers = {
            "baseline": recipes.baseline(student()),
            "KD": recipes.kd(student(), teacher, alpha=0.5, temperature=2.0),
            "Tf-KD_reg": recipes.tfkd_reg(
                student(), VOCAB, alpha=0.1, temperature=20.0
            ),
            "GJSD": Distiller(
                student=student(),
                teacher=teacher,
                soft_loss=losses.GeneralizedJSD(beta=0.5),
                alpha=0.5,
            ),
        }
        for name, distiller in distillers.items():
            keras.utils.set_random_seed(SEED)
            history = train(distiller, STUDENT_EPOCHS)
            print(
                f"{name:<10} train loss {history['loss'][-1]:.4f} "
                f"(hard {history['hard_loss'][-1]:.4f}, "
                f"soft {history['soft_loss'][-1]:.4f})"
            )
        """
    ),
    md(
        """
        ## 5. Held-out perplexity and next-token accuracy

        Both over the real tokens of the held-out paragraphs only: perplexity
        `exp(mean cross-entropy)` (a uniform guess scores `V = 256`), and the
        share of tokens whose most likely next token is the true one.
        """
    ),
    code(
        """
        if SMOKE:
            print("SMOKE run: a few lines of text, tiny models, 1-2 epochs.")
            print("It shows the API at work; its numbers compare nothing.")
        print(f"{'model':<10} {'params':>8} {'perplexity':>10} {'accuracy':>9}")
        models = {"teacher": teacher, **{k: d.student for k, d in distillers.items()}}
        for name, model in models.items():
            _, nll, correct = token_losses(model)
            perplexity = math.exp((nll * w_test).sum() / w_test.sum())
            accuracy = 100 * (correct * w_test).sum() / w_test.sum()
            params = model.count_params()
            print(f"{name:<10} {params:8d} {perplexity:10.3f} {accuracy:8.2f}%")
        print(f"{'uniform':<10} {'':>8} {VOCAB:10.3f}")
        """
    ),
    md(
        """
        ## 6. Generate text, save the student and load it back

        `student.generate` continues a prompt (`stop_token_ids=None`: with
        no preprocessor there is no end token, so it fills the `L`
        positions); the greedy sampler makes the result reproducible. The
        Tf-KD_reg student is saved as a `.keras` file in the working
        directory (`/content` on Colab); loading it needs KerasHub, but
        neither keras-tfkd nor the teacher.
        """
    ),
    code(
        """
        PROMPT = "The student"


        def complete(model, prompt=PROMPT):
            ids = encode(prompt)
            token_ids = np.full((1, SEQ_LEN), PAD, dtype="int32")
            token_ids[0, : len(ids)] = ids
            model.compile(sampler="greedy")
            out = model.generate(
                {"token_ids": token_ids, "padding_mask": token_ids != PAD},
                stop_token_ids=None,
            )
            return decode(keras.ops.convert_to_numpy(out["token_ids"])[0])


        student = distillers["Tf-KD_reg"].student
        print(f"generated: {complete(student)!r}")

        path = Path("tfkd_reg_gpt2_student.keras")
        student.save(path)
        print(f"saved the student to {path.resolve()}")
        reloaded = keras.saving.load_model(path, compile=False)
        before = keras.ops.convert_to_numpy(student.predict(x_test, verbose=0))
        after = keras.ops.convert_to_numpy(reloaded.predict(x_test, verbose=0))
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
        print(
            f"reloaded {path}: {reloaded.count_params()} parameters, "
            "same next-token logits as before saving"
        )
        """
    ),
    md(
        """
        ## Next

        * **A real teacher.** A KerasHub preset, e.g.
          `keras_hub.models.GPT2CausalLM.from_preset("gpt2_base_en")`, can
          teach a smaller GPT-2 that shares its tokenizer (its preprocessor,
          `vocabulary_size=50257`); `preprocessor(texts)` yields the
          `(x, y, sample_weight)` used here. Token-level losses compare token
          id `i` of both models, so they must share the tokenizer: a teacher
          with another vocabulary size than the student's is refused (and,
          when both carry a preprocessor, one with another tokenizer); a
          teacher whose output layer is only padded with unused ids is cut
          to the student's size by `teachers.TruncatedVocabulary(teacher,
          vocabulary_size=V)`.
        * **Other divergences.** Swap `losses.GeneralizedJSD` for
          `losses.ReverseKL`, `losses.SkewKL` or `losses.TotalVariation`.
        * docs/building-blocks.md, "Language models: sequence outputs",
          describes the token mean and which teachers and methods work per
          token.
        """
    ),
)


NOTEBOOKS = (
    Spec(
        QUICKSTART,
        QUICKSTART_TITLE,
        QUICKSTART_SUMMARY,
        QUICKSTART_RUN,
        QUICKSTART_DETAIL,
        QUICKSTART_CELLS,
    ),
    Spec(CIFAR, CIFAR_TITLE, CIFAR_SUMMARY, CIFAR_RUN, CIFAR_DETAIL, CIFAR_CELLS, True),
    Spec(LSR, LSR_TITLE, LSR_SUMMARY, LSR_RUN, LSR_DETAIL, LSR_CELLS),
    Spec(
        CAUSAL_LM,
        CAUSAL_LM_TITLE,
        CAUSAL_LM_SUMMARY,
        CAUSAL_LM_RUN,
        CAUSAL_LM_DETAIL,
        CAUSAL_LM_CELLS,
    ),
)


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def build_notebook(spec):
    """The `nbformat.NotebookNode` of one `Spec` (no outputs, stable cell ids)."""
    nb = nbformat.v4.new_notebook()
    stem = spec.filename.split("_", 1)[0]
    for index, (kind, source) in enumerate(spec.cells):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(source)
        else:
            cell = nbformat.v4.new_code_cell(source)
        cell["id"] = f"nb{stem}-cell{index:02d}"
        nb.cells.append(cell)
    colab = {"provenance": [], "toc_visible": True}
    nb.metadata = {
        "kernelspec": {
            "display_name": "Python 3",
            "language": "python",
            "name": "python3",
        },
        "language_info": {"name": "python"},
        "colab": colab,
    }
    if spec.gpu:
        colab["gpuType"] = "T4"
        nb.metadata["accelerator"] = "GPU"
    nbformat.validate(nb)
    return nb


def docs_markdown():
    """The README section: one row per notebook, with its badge and run time."""
    lines = [
        "## Notebooks",
        "",
        "Each notebook opens in Google Colab, installs keras-tfkd from "
        f"`{INSTALL_TARGET}` in its first cell when it is not importable, and lets "
        'you pick the Keras backend there (`KERAS_BACKEND`, "jax" by default). '
        "Run times are estimates for a full run on a Colab GPU, not measurements.",
        "",
        "| Notebook | What it shows | Open | Full run on a Colab GPU (estimate) |",
        "|---|---|---|---|",
    ]
    for spec in NOTEBOOKS:
        lines.append(
            f"| [{spec.filename}](../notebooks/{spec.filename}) | {spec.summary} | "
            f"{badge(spec.filename)} | {spec.full_run} |"
        )
    lines += [
        "",
        "With `KERAS_TFKD_SMOKE=1` every notebook shrinks its data, models and "
        "epochs and runs offline (on scikit-learn's `digits`, or a few lines of "
        "text for the language model); the test suite executes every notebook "
        "that way (`tests/test_notebooks.py`). The notebooks are "
        "generated by `notebooks/build_notebooks.py`; edit that script, not the "
        "`.ipynb` files.",
        "",
    ]
    return "\n".join(lines)


def render():
    """``{path: text}`` of every file this script writes."""
    files = {
        HERE / spec.filename: nbformat.writes(build_notebook(spec)) + "\n"
        for spec in NOTEBOOKS
    }
    files[DOCS_PATH] = docs_markdown()
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a written file differs from what would be generated",
    )
    args = parser.parse_args(argv)
    stale = []
    for path, text in render().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    verb = "out of date" if args.check else "written"
    for path in stale:
        print(f"{verb}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
