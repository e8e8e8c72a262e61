"""``python -m keras_tfkd``: the ``keras-tfkd`` command (see `keras_tfkd.cli`)."""

from keras_tfkd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
