"""The ``>>>`` examples of every keras_tfkd module run, on the current backend.

Modules are found by walking the package (a module added or moved by a
redesign is picked up by itself); each module's docstring examples are
collected with `doctest.DocTestFinder` and run with ELLIPSIS and
NORMALIZE_WHITESPACE. Examples marked ``# doctest: +SKIP`` are not run.

`KNOWN_BROKEN` lists the docstrings whose examples fail today because the
example itself is wrong (not the code it shows); each is a strict xfail, so
fixing the docstring turns it into an XPASS failure: then remove it here.
"""

import doctest
import importlib
import pkgutil

import pytest

import keras_tfkd

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

KNOWN_BROKEN = {}  # none today: add 'module.name': 'why' for a strict xfail


def _module_names():
    names = ["keras_tfkd"]
    for info in pkgutil.walk_packages(keras_tfkd.__path__, "keras_tfkd."):
        names.append(info.name)
    return sorted(names)


MODULES = _module_names()


def _doctests(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(module, module_name) if t.examples]


class DoctestFailed(AssertionError):
    """A docstring example raised or printed something else than shown."""


def _run(test):
    """Run one docstring's examples; raise `DoctestFailed` with doctest's report."""
    report = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS, verbose=False)
    result = runner.run(test, out=report.append, clear_globs=True)
    if result.failed:
        raise DoctestFailed(
            f"{result.failed} of {result.attempted} examples of {test.name} "
            "failed:\n" + "".join(report)
        )
    return result


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    failures = []
    for test in _doctests(module_name):
        if test.name in KNOWN_BROKEN:
            continue  # run by test_known_broken_docstring_examples_still_fail
        try:
            _run(test)
        except DoctestFailed as error:
            failures.append(str(error))
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=pytest.mark.xfail(strict=True, raises=DoctestFailed, reason=why),
        )
        for name, why in sorted(KNOWN_BROKEN.items())
    ],
)
def test_known_broken_docstring_examples_still_fail(name):
    module_name = name
    while module_name not in MODULES:  # the longest prefix that is a module
        module_name = module_name.rpartition(".")[0]
        assert module_name, f"no module holds {name!r}"
    by_name = {t.name: t for t in _doctests(module_name)}
    assert name in by_name, f"{name!r} has no docstring examples any more"
    _run(by_name[name])


def test_the_examples_are_found():
    """The walk finds the package's modules and their examples (a harness that
    collects nothing would pass every test above)."""
    assert {"keras_tfkd.losses", "keras_tfkd.models.cnn", "keras_tfkd.study"} <= set(
        MODULES
    )
    examples = {name: _doctests(name) for name in MODULES}
    with_examples = [name for name, tests in examples.items() if tests]
    assert len(with_examples) >= 15, with_examples
    runnable = [
        example
        for tests in examples.values()
        for test in tests
        if test.name not in KNOWN_BROKEN
        for example in test.examples
        if not example.options.get(doctest.SKIP)
    ]
    assert len(runnable) >= 80, len(runnable)
