"""Text for language models: Debian's ``fortunes`` as byte-level windows.

`load_fortunes` reads the fortune cookie files of Debian's ``fortunes``
package (``apt-get install fortunes``: about 2.4 MB of English quotations,
jokes and definitions in ``/usr/share/games/fortunes``), offline, and turns
them into fixed-length windows for next-token prediction:

* **Vocabulary** (`VOCABULARY_SIZE` = 258): the 256 byte values are their own
  token ids (byte ``b`` is token ``b``, so any text and any encoding fits and
  nothing is unknown), `BOS_ID` = 256 starts and ends every fortune (a
  document separator, like GPT-2's ``<|endoftext|>``), and `PAD_ID` = 257
  fills windows past the end of a fortune.
* **Splits**: by fortune, never by window, so no fortune has windows in two
  splits. The fortunes (duplicates across files dropped) are shuffled with a
  fixed seed (`SPLIT_SEED`) and cut into train / validation / test shares:
  the same split on every machine and backend.
* **Windows**: each fortune is encoded as ``[BOS] + bytes + [BOS]`` and cut
  into windows of `sequence_length` + 1 tokens with a stride of
  `sequence_length`; the inputs ``x`` are a window's first L tokens and the
  labels ``y`` the next token at each position (``x`` shifted by one). The
  last window of a fortune is padded with `PAD_ID`, and the padding mask
  ``w`` (1 for a real next token, 0 for padding) is the `sample_weight`
  every loss and metric uses, so padding never counts.

Example:

>>> text = load_fortunes(sequence_length=64)  # doctest: +SKIP
>>> x, y, w = text.split("train")  # doctest: +SKIP
>>> x.shape, y.shape, w.shape  # doctest: +SKIP
((33000, 64), (33000, 64), (33000, 64))
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from keras_tfkd.data.dataset import DatasetNotFoundError

__all__ = [
    "BOS_ID",
    "FORTUNES_DIR",
    "FORTUNES_PACKAGE",
    "PAD_ID",
    "TEXT_DATASETS",
    "TextDataset",
    "VOCABULARY_SIZE",
    "decode",
    "encode",
    "load_fortunes",
    "read_fortunes",
    "split_fortunes",
    "windows",
]

#: Where Debian's ``fortunes`` package installs its fortune files.
FORTUNES_DIR = "/usr/share/games/fortunes"
#: The Debian package that holds them.
FORTUNES_PACKAGE = "fortunes"
#: The text data sets `load_text` knows (a study on one of them is a
#: language-modelling study).
TEXT_DATASETS = ("fortunes",)
#: Start and end of every fortune.
BOS_ID = 256
#: Padding past the end of a fortune (its label weight is 0).
PAD_ID = 257
#: 256 bytes, BOS and PAD.
VOCABULARY_SIZE = 258
#: The seed of the shuffle that assigns fortunes to splits.
SPLIT_SEED = 0
SPLITS = ("train", "validation", "test")


def encode(text):
    """The token ids of `text` (a str, UTF-8 encoded, or bytes): one per byte.

    >>> encode("Hi")
    [72, 105]
    """
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return list(data)


def decode(ids):
    """The text of token ids (BOS and PAD dropped, invalid UTF-8 replaced).

    >>> decode([256, 72, 105, 257])
    'Hi'
    """
    data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
    return data.decode("utf-8", errors="replace")


def _fortune_files(directory):
    """The plain fortune files of `directory`: no ``.dat`` index, no ``.u8``
    link, no folder (``off/`` holds the offensive ones of another package)."""
    folder = Path(directory)
    files = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix in (".dat", ".u8") or path.is_symlink():
                continue
            if path.is_file():
                files.append(path)
    return files


def read_fortunes(directory=None):
    """Every fortune of the fortune files in `directory`, as bytes, in order.

    A fortune file holds fortunes separated by lines of a single ``%``. Empty
    fortunes are skipped, and a fortune found again (in another file) is kept
    once, where it was first found (files in name order), so that no text can
    be in two splits. `directory` defaults to `FORTUNES_DIR`, or
    ``$KERAS_TFKD_FORTUNES`` when that is set.

    Raises:
        DatasetNotFoundError: no fortune file there; the message names the
            folder and the Debian package to install.
    """
    directory = directory or os.environ.get("KERAS_TFKD_FORTUNES") or FORTUNES_DIR
    files = _fortune_files(directory)
    seen, fortunes = set(), []
    for path in files:
        text = path.read_bytes().replace(b"\r\n", b"\n")
        for part in text.split(b"\n%\n"):
            part = part.strip(b"\n%").strip()
            if part and part not in seen:
                seen.add(part)
                fortunes.append(part)
    if not fortunes:
        raise DatasetNotFoundError(
            f"No fortune files in {str(directory)!r} (the plain files of Debian's "
            f"{FORTUNES_PACKAGE!r} package, fortunes separated by lines of '%'). "
            f"Install them with `apt-get install {FORTUNES_PACKAGE}` (they go to "
            f"{FORTUNES_DIR}), or point $KERAS_TFKD_FORTUNES or `directory` at a "
            "folder of such files.",
            searched=[str(directory)],
        )
    return fortunes


def split_fortunes(fortunes, validation_fraction=0.1, test_fraction=0.1):
    """``{"train": [...], "validation": [...], "test": [...]}``: the fortunes
    shuffled with `SPLIT_SEED` and cut into shares (each split non-empty when
    there are at least three fortunes and both fractions are > 0).

    >>> parts = split_fortunes([b"a", b"b", b"c", b"d"], 0.25, 0.25)
    >>> sorted(len(p) for p in parts.values())
    [1, 1, 2]
    """
    for name, value in (
        ("validation_fraction", validation_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0 <= value < 1:
            raise ValueError(f"`{name}` must be in [0, 1), got {name}={value!r}.")
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            "`validation_fraction` + `test_fraction` must be < 1, got "
            f"{validation_fraction!r} + {test_fraction!r}."
        )
    n = len(fortunes)
    order = np.random.RandomState(SPLIT_SEED).permutation(n)
    n_test = max(1, round(n * test_fraction)) if test_fraction and n >= 3 else 0
    n_val = (
        max(1, round(n * validation_fraction)) if validation_fraction and n >= 3 else 0
    )
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return {
        "train": [fortunes[i] for i in train],
        "validation": [fortunes[i] for i in val],
        "test": [fortunes[i] for i in test],
    }


def windows(fortunes, sequence_length):
    """``(x, y, w)``: int32 inputs and next-token labels ``(N, L)`` and float32
    weights ``(N, L)`` (1 for a real next token, 0 for padding), from fortunes
    (bytes) as the module docstring describes.

    >>> x, y, w = windows([b"abc"], 3)  # [BOS a b c BOS]: windows of 4 tokens
    >>> x.tolist(), y.tolist(), w.tolist()
    ([[256, 97, 98], [99, 257, 257]], [[97, 98, 99], [256, 257, 257]], \
[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    """
    length = int(sequence_length)
    if length < 1:
        raise ValueError(
            f"`sequence_length` must be an integer >= 1, got {sequence_length!r}."
        )
    xs, ys, ws = [], [], []
    for fortune in fortunes:
        ids = np.array([BOS_ID, *fortune, BOS_ID], dtype=np.int32)
        for start in range(0, len(ids) - 1, length):
            chunk = ids[start : start + length + 1]
            real = len(chunk) - 1
            x = np.full(length, PAD_ID, np.int32)
            y = np.full(length, PAD_ID, np.int32)
            x[:real], y[:real] = chunk[:-1], chunk[1:]
            w = np.zeros(length, np.float32)
            w[:real] = 1.0
            xs.append(x), ys.append(y), ws.append(w)
    if not xs:
        empty = np.zeros((0, length), np.int32)
        return empty, empty.copy(), np.zeros((0, length), np.float32)
    return np.stack(xs), np.stack(ys), np.stack(ws)


@dataclasses.dataclass(frozen=True)
class TextDataset:
    """Next-token windows of each split: ``arrays[split] = (x, y, w)``.

    ``name``, ``sequence_length``, ``vocabulary_size``, ``fortunes`` (how
    many fortunes each split holds) and ``arrays``.
    """

    name: str
    sequence_length: int
    vocabulary_size: int
    fortunes: dict
    arrays: dict

    def split(self, name):
        """``(x, y, w)`` of split `name` (train, validation or test)."""
        if name not in self.arrays:
            raise ValueError(
                f"`split` must be one of {', '.join(self.arrays)}, got {name!r}."
            )
        return self.arrays[name]

    def num_windows(self, name):
        return int(self.arrays[name][0].shape[0])

    def num_tokens(self, name):
        """The unmasked tokens (labels that count) of split `name`."""
        return int(self.arrays[name][2].sum())


def _limit_parts(limit):
    """(train, validation, test) window limits from a study's `limit`."""
    if limit is None:
        return None, None, None
    if isinstance(limit, (tuple, list)):
        n_train, n_test = limit
        return n_train, n_test, n_test
    return limit, limit, limit


def load_fortunes(
    directory=None,
    sequence_length=64,
    validation_fraction=0.1,
    test_fraction=0.1,
    limit=None,
):
    """The fortunes as a `TextDataset` of byte-level next-token windows.

    Args:
        directory: the folder of fortune files (`read_fortunes`).
        sequence_length: ``L``, the tokens of a window.
        validation_fraction, test_fraction: the shares of the fortunes (not
            of the windows) held out (`split_fortunes`).
        limit: None, the first N windows of every split, or ``(n_train,
            n_test)`` (the validation split takes ``n_test``; None for all).

    Raises:
        DatasetNotFoundError: the fortune files are missing (the message names
            the Debian package).
    """
    parts = split_fortunes(read_fortunes(directory), validation_fraction, test_fraction)
    limits = dict(zip(SPLITS, _limit_parts(limit)))
    arrays = {}
    for split in SPLITS:
        x, y, w = windows(parts[split], sequence_length)
        n = limits[split]
        arrays[split] = (x[:n], y[:n], w[:n]) if n is not None else (x, y, w)
    return TextDataset(
        name="fortunes",
        sequence_length=int(sequence_length),
        vocabulary_size=VOCABULARY_SIZE,
        fortunes={s: len(parts[s]) for s in SPLITS},
        arrays=arrays,
    )
