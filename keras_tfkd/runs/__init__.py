"""Running experiments: a run is planned once, then executed.

=================  ============================================================
module             holds
=================  ============================================================
`config`           `TrainConfig`: optimiser, schedule, augmentation, evaluation
`plan`             `plan_run` -> `RunPlan` (with its `TeacherPlan`): every
                   setting, the key and the folders, resolved once
`train`            `train` (plan and execute), `execute` (run a plan)
`loop`             the training loop: seeding, build, compile, fit per epoch,
                   resume from the backup, the per-epoch test accuracy
`teacher_cache`    normal runs cached as ``.keras`` files; teachers loaded
`store`            `run_key`, `ResultsStore` (``results.json``)
`models`           model names: `build_model`, `model_names`, and your own
                   functions (`register_model`, `model_fingerprint`)
`explain`          `explain_accuracy`: why a run's accuracy looks as it does
=================  ============================================================

How a method gets its teacher is data (`keras_tfkd.experiments.TEACHER_SOURCE`):
baseline, lsr and tfkd_reg have none (the virtual teacher is built from the
labels); kd and rekd use the *best* checkpoint of a normal run of the teacher
model (best test accuracy over epochs, as the paper reports) or a checkpoint
given by the user; dekd the checkpoint after ``teacher_epochs`` epochs of the
teacher's normal run; tfkd_self the best checkpoint of a normal run of the
student's own architecture, whose frozen copy teaches a freshly initialised
model of it (from the same initial weights, as in the reference code, which
seeds every run with 230).

Example:

```python
from keras_tfkd import data, experiments, runs
ds = data.load("digits")
exp = experiments.get("tfkd_reg/resnet18").replace(
    student="cnn_tiny", dataset="digits", epochs=10, batch_size=64)
store = runs.ResultsStore("runs/demo/results.json")
plan = runs.plan_run(exp, ds, seed=0, output_dir="runs/demo",
                     config=runs.TrainConfig(optimizer="adam"))
record = runs.execute(plan, ds, store=store)
record["best_test_accuracy"], record["kl_note"]
```
"""

from keras_tfkd.runs.config import OPTIMIZERS, TrainConfig
from keras_tfkd.runs.explain import explain_accuracy
from keras_tfkd.runs.loop import compilation_cache, deterministic
from keras_tfkd.runs.models import (
    ModelCheckError,
    build_model,
    check_model,
    check_model_name,
    checkpoint_name,
    is_custom_model,
    model_fingerprint,
    model_names,
    register_model,
)
from keras_tfkd.runs.plan import (
    BACKUPS_DIR,
    CHECKPOINTS_DIR,
    RunPlan,
    TeacherPlan,
    plan_run,
    planned_key,
)
from keras_tfkd.runs.store import RESULTS_FILE, ResultsStore, run_key
from keras_tfkd.runs.teacher_cache import (
    CorruptCheckpointError,
    check_keras_file,
    teacher_checkpoint,
)
from keras_tfkd.runs.train import execute, train

__all__ = [
    "BACKUPS_DIR",
    "CHECKPOINTS_DIR",
    "OPTIMIZERS",
    "RESULTS_FILE",
    "CorruptCheckpointError",
    "ModelCheckError",
    "ResultsStore",
    "RunPlan",
    "TeacherPlan",
    "TrainConfig",
    "build_model",
    "check_keras_file",
    "check_model",
    "checkpoint_name",
    "check_model_name",
    "compilation_cache",
    "deterministic",
    "execute",
    "explain_accuracy",
    "is_custom_model",
    "model_fingerprint",
    "model_names",
    "plan_run",
    "planned_key",
    "register_model",
    "run_key",
    "teacher_checkpoint",
    "train",
]
