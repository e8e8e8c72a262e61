"""Data sets and input pipelines for the Tf-KD experiments, on every Keras backend.

Entry points: :func:`load` finds a data set and returns a :class:`Dataset`
(NumPy arrays, or file lists for the image-folder sets), :func:`available`
names the sets it takes, and :func:`pipeline` turns a split into seeded,
normalised, reference-augmented batches for ``model.fit``.

The modules, one concept each:

* `keras_tfkd.data.dataset` - the `Dataset` type and the data errors;
* `keras_tfkd.data.sources` - where each set is searched for, the download
  policy (``$KERAS_TFKD_DATA``, ``$KERAS_TFKD_OFFLINE``) and the help texts;
* `keras_tfkd.data.formats` - file readers (IDX, CIFAR binary, image folders);
* `keras_tfkd.data.loaders` - one loader per set, `load` and `available`;
* `keras_tfkd.data.arrays` - your own arrays (`from_arrays`) and ``.npz``
  files (`load_npz`);
* `keras_tfkd.data.batching` - `pipeline` (argument checks, augmentation
  policy, engine choice), `num_batches`, `pipeline_throughput`;
* `keras_tfkd.data.augment` - the reference augmentations in NumPy;
* `keras_tfkd.data.pydataset` - the NumPy engine, a ``keras.utils.PyDataset``;
* `keras_tfkd.data._tfdata` - the ``tf.data`` engine, the one data module that
  imports TensorFlow.

Importing this package imports neither Keras nor TensorFlow; the engines are
imported when a pipeline is built.
"""

# Besides __all__, the other public names that the module `keras_tfkd.data`
# had before it became this package (constants, `pipeline_engine`). To change
# the system folders searched, set `keras_tfkd.data.sources.SYSTEM_DATA_DIRS`:
# the copy here is not read.
from keras_tfkd.data.arrays import NPZ_KEYS, from_arrays, load_npz  # noqa: F401
from keras_tfkd.data.batching import (  # noqa: F401
    AUGMENTATIONS,
    ENGINES,
    augmentation_is_random,
    num_batches,
    pipeline,
    pipeline_engine,
    pipeline_throughput,
    reference_augmentation,
)
from keras_tfkd.data.dataset import (
    Dataset,
    DatasetFormatError,
    DatasetNotFoundError,
    holdout,
)
from keras_tfkd.data.formats import (  # noqa: F401
    IMAGE_EXTENSIONS,
    read_cifar_binary,
    read_idx,
)
from keras_tfkd.data.loaders import (  # noqa: F401
    CIFAR10_CLASSES,
    CIFAR_MEAN,
    CIFAR_STD,
    DIGITS_MEAN,
    DIGITS_STD,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TINY_IMAGENET_MEAN,
    TINY_IMAGENET_STD,
    available,
    load,
)
from keras_tfkd.data.sources import (  # noqa: F401
    CIFAR10_FILES,
    CIFAR100_FILES,
    ENV_DATA,
    ENV_OFFLINE,
    FASHION_MNIST_FILES,
    SYSTEM_DATA_DIRS,
    TINY_IMAGENET_URL,
)

__all__ = [
    "AUGMENTATIONS",
    "Dataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "augmentation_is_random",
    "available",
    "from_arrays",
    "holdout",
    "load",
    "load_npz",
    "num_batches",
    "pipeline",
    "pipeline_throughput",
    "read_cifar_binary",
    "read_idx",
    "reference_augmentation",
]
