"""Write a study's tables into README.md and docs/results.md.

Every results table of the README and the docs is a marked block, written
from a study's output folder (what ``keras-tfkd study`` writes: results.md
and results.json) by this script and never by hand:

    make demo                                      # writes runs/study
    .venv/bin/python benchmarks/results_tables.py runs/study

* docs/results.md, between ``<!-- results:NAME:begin -->`` and
  ``<!-- results:NAME:end -->``: the study's whole results.md (settings, the
  accuracy table and its notes, "Does it help?", calibration);
* README.md, between the same markers: the headline claims table (claim,
  mean paired difference with its 95% interval, seeds improved, the study's
  own verdict) and the baseline's accuracy.

Both say where they come from: the command, the date, the commit
(``git rev-parse --short HEAD``) and whether the tree had uncommitted
changes, the backend and Keras version the runs recorded, and the machine
this script runs on (so run it on the machine that ran the study, right
after it). NAME is the study's preset (read from results.md; ``--study``
overrides it). Nothing outside the markers changes; a file without the
markers is an error, not an append.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from keras_tfkd.study.stats import LEAVE_ONE_OUT, SEEDS_NEEDED

ROOT = Path(__file__).resolve().parents[1]

#: The command that produced each known study, keyed by preset;
#: ``{backend}`` and ``{folder}`` are filled in from the runs. A study run
#: with other flags (seeds, epochs, ...) needs ``--command``.
COMMANDS = {
    "digits": "keras-tfkd study --backend {backend} --output-dir {folder}",
    "fashion_mnist_regime": (
        "keras-tfkd study --preset fashion_mnist_regime --backend {backend} "
        "--output-dir {folder}"
    ),
    "fashion_mnist_full": (
        "python benchmarks/gpu_study.py --backend {backend} --output-dir {folder} "
        "--data-dir DIR"
    ),
    "fortunes_lm": (
        "keras-tfkd study --preset fortunes_lm --backend {backend} "
        "--output-dir {folder}"
    ),
    "digits_tuned": (
        "keras-tfkd study --tune 4 --backend {backend} --output-dir {folder}"
    ),
    "fortunes_lm_tuned": (
        "keras-tfkd study --preset fortunes_lm --tune 3 --backend {backend} "
        "--output-dir {folder}"
    ),
}

#: The title of a language-modelling study's results.md (`keras_tfkd.study.lm`).
_LM_TITLE = "# Language-modelling study"

#: What ``make demo`` runs (the Makefile's DEMO_BACKEND and folder).
MAKE_DEMO = "keras-tfkd study --backend jax --output-dir runs/study"

_CLAIMS_HEADING = "## Does it help? (paired over seeds)"


def marker(name, end=False):
    """The comment that opens (or, with `end`, closes) study `name`'s block."""
    return f"<!-- results:{name}:{'end' if end else 'begin'} -->"


def replace_marked(text, name, body, where="text"):
    """`text` with the block of study `name` replaced by `body`.

    Everything outside the two markers is kept byte for byte. Raises
    ValueError naming `where` (the file) when a marker is missing, appears
    more than once, or the end comes before the begin.
    """
    begin, end = marker(name), marker(name, end=True)
    for tag in (begin, end):
        count = text.count(tag)
        if count != 1:
            raise ValueError(
                f"{where} has {count} copies of {tag!r}; it needs exactly one "
                f"{begin} ... {end} block for study {name!r} (a study that only "
                "docs/results.md shows: --docs-only)."
            )
    start = text.index(begin) + len(begin)
    stop = text.index(end)
    if stop < start:
        raise ValueError(f"{where}: {end!r} comes before {begin!r}.")
    return text[:start] + "\n" + body.strip("\n") + "\n" + text[stop:]


# ------------------------------------------------------------------ reading
def read_study(folder):
    """The study in `folder`: its results.md (text and parts) and records.

    Returns a dict with ``markdown`` (results.md), ``header`` (its settings
    line), ``preset`` (None when the header names none), ``seeds``,
    ``epochs`` and ``dataset`` (from the header), ``claims`` (the "Does it
    help?" table's rows, as dicts of its columns, or None), ``baselines``
    (the accuracy table's Baseline rows, likewise) and ``records``
    (results.json's records of this study: its data set, seeds and epochs).
    """
    folder = Path(folder)
    md_path, json_path = folder / "results.md", folder / "results.json"
    for path in (md_path, json_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: give the --output-dir of a finished "
                "`keras-tfkd study` (it writes results.md and results.json)."
            )
    markdown = md_path.read_text(encoding="utf-8")
    lines = markdown.splitlines()
    if lines and lines[0].startswith(_LM_TITLE):
        return _read_lm_study(markdown, lines, json_path)
    if not lines or lines[0] != "# Tf-KD study" or len(lines) < 3:
        raise ValueError(f"{md_path} is not a keras-tfkd study's results.md.")
    header = lines[2].rstrip(".")
    preset = re.match(r"preset (\S+): ", header)
    seeds = re.search(r", seeds ([\d ]+),", header)
    epochs = re.search(r", (\d+) epochs?,", header)
    dataset = re.match(r"(?:preset \S+: )?(\S+) \(K=", header)
    records = json.loads(json_path.read_text(encoding="utf-8") or "[]")
    if not isinstance(records, list):
        raise ValueError(f"{json_path} is not a keras-tfkd results file.")
    study = {
        "markdown": markdown,
        "header": header,
        "preset": preset.group(1) if preset else None,
        "seeds": [int(s) for s in seeds.group(1).split()] if seeds else None,
        "epochs": int(epochs.group(1)) if epochs else None,
        "dataset": dataset.group(1) if dataset else None,
    }
    study["records"] = [r for r in records if _of_study(r, study)]
    study["trials"] = _trials(records)
    tables = _tables(lines)
    study["baselines"] = [
        row for row in tables.get("", []) if row.get("method") == "Baseline"
    ]
    claims = tables.get(_CLAIMS_HEADING)
    study["claims"] = claims or None
    return study


def _read_lm_study(markdown, lines, json_path):
    """`read_study` of a language-modelling study: the same keys, ``lm`` True,
    ``header`` its "Models:" line, ``claims`` the rows of its table with a
    paired difference, ``baselines`` its Baseline row."""
    preset = re.search(r"\(preset `(\S+)`\)", lines[0])
    header = next((line for line in lines if line.startswith("Models: ")), "")
    records = json.loads(json_path.read_text(encoding="utf-8") or "[]")
    if not isinstance(records, list):
        raise ValueError(f"{json_path} is not a keras-tfkd results file.")
    records = [r for r in records if isinstance(r, dict) and r.get("study") == "lm"]
    trials = _trials(records)
    records = [r for r in records if "tuning_trial" not in r]
    if any("tuned" in r for r in records):  # a tuned study: its own runs only
        records = [r for r in records if "tuned" in r or r.get("role") == "teacher"]
    rows = _tables(lines).get("", [])
    students = [r for r in records if r.get("role") == "student"]
    return {
        "lm": True,
        "trials": trials,
        "markdown": markdown,
        "header": header.rstrip("."),
        "preset": preset.group(1) if preset else None,
        "seeds": sorted({int(r["seed"]) for r in students}) or None,
        "epochs": students[0].get("epochs") if students else None,
        "dataset": records[0].get("dataset") if records else None,
        "records": records,
        "claims": [
            r for r in rows if r.get("Δ perplexity [95% CI]") not in (None, "", "n/a")
        ]
        or None,
        "baselines": [
            r
            for r in rows
            if r.get("method") == "Baseline"
            or r.get("method", "").startswith("Teacher")
        ],
    }


def _trials(records):
    """The tuning trials of a folder (`keras_tfkd.study.tune`): runs on the
    tuning seed, part of a tuned study's cost but not of its rows."""
    return [r for r in records if isinstance(r, dict) and "tuning_trial" in r]


def _of_study(record, study):
    """Whether a results.json record belongs to the study of results.md
    (the same data set, one of its seeds, its epochs unless it is the De-KD
    teacher); a folder may hold the runs of other studies too."""
    if not isinstance(record, dict):
        return False
    if study["seeds"] is not None and record.get("seed") not in study["seeds"]:
        return False
    if (
        study["epochs"] is not None
        and record.get("role", "run") == "run"
        and record.get("epochs") != study["epochs"]
    ):
        return False
    return study["dataset"] is None or record.get("dataset") in (
        None,
        study["dataset"],
    )


def _tables(lines):
    """``{section heading: [row dict, ...]}`` of the first Markdown table
    under each ``## `` heading ("" before the first heading)."""
    tables, section, current = {}, "", None
    for line in lines:
        if line.startswith("## "):
            section, current = line, None
            continue
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if current is None:  # a table's head: only a section's first is kept
            current = {"head": cells, "rows": []}
            tables.setdefault(section, current)
        elif not all(set(c) <= set("-: ") for c in cells):
            current["rows"].append(dict(zip(current["head"], cells)))
    return {name: table["rows"] for name, table in tables.items()}


# --------------------------------------------------------------- provenance
def _git(*args):
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def code_state():
    """``(short commit, dirty, commit time)`` of this checkout (None's
    outside git); dirty: `git status --porcelain` lists anything."""
    commit = _git("rev-parse", "--short", "HEAD")
    if commit is None:
        return None, None, None
    status = _git("status", "--porcelain")
    when = _git("log", "-1", "--format=%cI", "HEAD")
    return commit, bool(status), _parse_time(when)


def machine():
    """This machine in words: CPU count and model, OS, Python."""
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or "unknown CPU model"
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}"
    )


def _parse_time(text):
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when


def _as_tuple(value):
    return value if isinstance(value, tuple) else (value,)


def preset_differences(study):
    """The settings in which the study differs from its preset: the names
    among models and epochs, seeds, learning rate, batch (read from
    results.md's header) and example counts (from the records, for a preset
    with a ``limit``). Empty when they all match."""
    from keras_tfkd.study.config import StudyConfig

    config = StudyConfig.from_preset(study["preset"])
    if study.get("lm"):
        differ = []
        if study["seeds"] != sorted(config.seeds):
            differ.append("seeds")
        if study["epochs"] != config.epochs:
            differ.append("epochs")
        limit = list(config.limit) if isinstance(config.limit, tuple) else None
        if any((r.get("hyperparameters") or {}).get("limit") != limit
               for r in study["records"]):  # fmt: skip
            differ.append("example counts (--limit)")
        return differ
    models = config.student + (f" <- {config.teacher}" if config.teacher else "")
    expected = {
        "models and epochs": f", {models}, {config.epochs} epoch",
        "seeds": f", seeds {' '.join(map(str, config.seeds))},",
        "learning rate": (
            f", Adam lr {config.learning_rate:g} ",  # or, tuned, the rate it chose
            f"; untuned {config.learning_rate:g}) ",
        ),
        "batch": f", batch {config.batch_size},",
    }
    differ = [
        what
        for what, texts in expected.items()
        if not any(t in study["header"] for t in _as_tuple(texts))
    ]
    if config.limit is not None:
        train, test = config.limit
        for r in study["records"]:
            hp = r.get("hyperparameters") or {}
            seen = (hp.get("train_examples", 0) + hp.get("validation_examples", 0),)
            seen += (hp.get("test_examples"),)
            if (train and seen[0] != train) or (test and seen[1] != test):
                differ.append("example counts (--limit)")
                break
    return differ


def _values(records, field):
    return sorted({str(r[field]) for r in records if r.get(field) is not None})


def provenance(study, folder, command=None, host=None, today=None, code=None,
               name=None):  # fmt: skip
    """The facts the tables are stated with, as a dict of strings.

    `command` defaults to `COMMANDS`' entry for `name` (the block's; the
    study's preset when None), with the recorded backend and `folder`;
    `host` to `machine()`; `today` to today's UTC date; `code` to
    `code_state()`. The runs' count and training time include a tuned
    study's trials: they are part of its cost.
    """
    trials = study.get("trials") or []
    records = study["records"] + trials
    backends = _values(records, "backend")
    name = name or study["preset"]
    tuned = any("tuned" in r for r in study["records"])
    if command is None:
        if name not in COMMANDS:
            raise ValueError(
                f"no known command for study {name!r}: give --command (the "
                "command that wrote the folder)."
            )
        differ = preset_differences(study)
        if differ:
            raise ValueError(
                f"the study in {folder} differs from preset {name!r} in "
                f"{', '.join(differ)}, so the preset's command would misstate "
                "it: give --command (the command that wrote the folder)."
            )
        template = COMMANDS[name]
        if tuned != ("--tune" in template):
            raise ValueError(
                f"the study in {folder} was {'' if tuned else 'not '}tuned and "
                f"the command of {name!r} says otherwise: give --study with a "
                "tuned block's name (e.g. digits_tuned) or --command."
            )
        command = template.format(
            backend=backends[0] if len(backends) == 1 else "BACKEND",
            folder=Path(folder).as_posix(),
        )
    commit, dirty, committed = code or code_state()
    finished = sorted(
        t for t in (_parse_time(r.get("finished")) for r in records) if t is not None
    )
    seconds = sum(float(r.get("train_seconds") or 0) for r in records)
    if commit is None:
        code_text = "code: not a git checkout (commit unknown)"
    else:
        code_text = f"code at commit {commit}" + (
            " with uncommitted changes (dirty tree)" if dirty else " (clean tree)"
        )
        if committed is not None and finished and committed > finished[0]:
            code_text += (
                f"; this commit is dated {committed:%Y-%m-%d %H:%M} UTC, after "
                "the first run finished: the runs may be of earlier code"
            )
    if finished:
        span = f"{finished[0]:%Y-%m-%d %H:%M} to {finished[-1]:%Y-%m-%d %H:%M} UTC"
    else:
        span = "unknown times"
    return {
        "command": command,
        "make": "make demo" if command == MAKE_DEMO else None,
        "date": today
        or datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "code": code_text,
        "runs": (
            f"{len(records)} runs"
            + (f" ({len(trials)} of them tuning trials)" if trials else "")
            + f" finished {span}, backend "
            f"{', '.join(backends) or 'unknown'}, Keras "
            f"{', '.join(_values(records, 'keras_version')) or 'unknown'}, "
            f"{seconds / 60:.1f} min of training (sum of the runs' train_seconds)"
        ),
        "machine": host or machine(),
    }


# ----------------------------------------------------------------- writing
def _source_lines(prov, folder):
    return [
        f"Written by `benchmarks/results_tables.py` on {prov['date']} from "
        f"`{Path(folder).as_posix()}` (results.md, results.json).",
        "",
        "- command: "
        + (f"`{prov['make']}`, that is " if prov.get("make") else "")
        + f"`{prov['command']}`",
        f"- {prov['code']}",
        f"- runs: {prov['runs']}",
        f"- machine (where the tables were written): {prov['machine']}",
    ]


def full_section(study, prov, folder):
    """docs/results.md's block: the provenance, then the study's results.md
    without its title and figure, its ``##`` headings made ``####``."""
    body = []
    for line in study["markdown"].splitlines()[1:]:
        if line.startswith("![results]"):
            continue
        if line.startswith("## "):
            line = "##" + line
        body.append(line)
    while body and not body[0].strip():
        body.pop(0)
    return "\n".join([*_source_lines(prov, folder), "", *body]).rstrip() + "\n"


def _lm_short_section(study, prov, folder, doc_link):
    """README.md's block of a language-modelling study: each method's test
    perplexity and its paired differences from the baseline, with the
    study's own verdicts."""
    lines = [*_source_lines(prov, folder), "", f"{study['header']}."]
    # A tuned study's rows are at the settings chosen on validation: shown.
    head = ("method", "setting (tuned)") if study["trials"] else ("method",)
    head += ("test perplexity",)
    fields = ["hyper-parameters" if h.startswith("setting") else h for h in head]
    lines += [
        "",
        "| " + " | ".join(head) + " | Δ perplexity [95% CI] | verdict "
        f"| {LEAVE_ONE_OUT} | {SEEDS_NEEDED} "
        "| Δ next-token acc. points [95% CI] | verdict |",
        "|---|---|---|---|---|---|---|" + "---|" * len(head[1:]),
    ]
    for row in study["baselines"]:
        cells = [row.get(k, "") for k in fields]
        ref = "ref" if row.get("method") == "Baseline" else "-"
        lines.append("| " + " | ".join(cells) + f" | {ref} | | | | {ref} | |")
    for row in study["claims"] or []:
        cells = [row.get(k, "") for k in fields]
        cells += [row.get("Δ perplexity [95% CI]", "")]
        cells += [_bold(row.get("verdict (perplexity)", ""))]
        cells += [row.get(LEAVE_ONE_OUT, ""), row.get(SEEDS_NEEDED, "")]
        cells += [row.get("Δ acc points [95% CI]", "")]
        cells += [_bold(row.get("verdict (accuracy)", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Full tables: [docs/results.md]({doc_link})."]
    return "\n".join(lines) + "\n"


def _bold(verdict):
    return f"**{verdict}**" if verdict in ("supported", "not supported") else verdict


def short_section(study, prov, folder, doc_link):
    """README.md's block: the provenance, the baselines' headline accuracy
    and the claims table on the headline accuracy, each verdict the
    study's own."""
    if study.get("lm"):
        return _lm_short_section(study, prov, folder, doc_link)
    lines = [*_source_lines(prov, folder), "", f"Settings: {study['header']}."]
    claims = study["claims"]
    if not claims:
        lines += ["", "This study tested no claim (results.md has none)."]
    else:
        head = list(claims[0])
        field = next(h for h in head if h.endswith(": mean Δ [95% CI]"))
        name = field.split(":", 1)[0]
        for row in study["baselines"]:
            acc = next((v for k, v in row.items() if k.startswith(name)), None)
            if acc:
                lines.append(
                    f"Baseline {row.get('student', '')}: {acc} % {name} test "
                    f"accuracy (n = {row.get('n', '?')} seeds)."
                )
        texts = [c["claim"] for c in claims]
        # The verdict's stability (results.md of studies before it lack it).
        steady = [f"{name}: {k}" for k in (LEAVE_ONE_OUT, SEEDS_NEEDED)]
        steady = [k for k in steady if k in head]
        lines += [
            "",
            f"| claim ({name} test accuracy) | mean Δ [95% CI] | seeds improved "
            "| verdict |" + "".join(f" {k.split(': ', 1)[1]} |" for k in steady),
            "|---|---|---|---|" + "---|" * len(steady),
        ]
        for c in claims:
            claim = c["claim"]
            if texts.count(claim) > 1:
                claim += f" ({c['comparison']})"
            verdict = _bold(c[f"{name}: verdict"])
            lines.append(
                f"| {claim} | {c[field]} | {c[f'{name}: improved']} | {verdict} |"
                + "".join(f" {c[k]} |" for k in steady)
            )
    lines += ["", f"Full tables: [docs/results.md]({doc_link})."]
    return "\n".join(lines) + "\n"


def _anchor(name):
    return {
        "digits": "docs/results.md#digits-make-demo",
        "fashion_mnist_regime": "docs/results.md#fashion-mnist-in-the-papers-regime",
        "fortunes_lm": "docs/results.md#language-modelling-on-fortunes",
        "digits_tuned": "docs/results.md#digits-tuned-on-validation",
        "fortunes_lm_tuned": "docs/results.md#language-modelling-tuned-on-validation",
    }.get(name, "docs/results.md")


def write(folder, *, study_name=None, command=None, readme=None, results_doc=None,
          host=None, today=None, code=None):  # fmt: skip
    """Read the study in `folder` and replace its blocks in `readme` and
    `results_doc` (default: this repository's README.md and
    docs/results.md; ``readme=False``: docs/results.md only). Returns the
    study's name. Both files are checked for their markers before either
    is written."""
    readme = readme if readme is False else Path(readme or ROOT / "README.md")
    results_doc = Path(results_doc or ROOT / "docs" / "results.md")
    study = read_study(folder)
    name = study_name or study["preset"]
    if not name:
        raise ValueError(
            f"{folder}/results.md names no preset: give --study NAME (the "
            "name in the markers)."
        )
    study["preset"] = study["preset"] or name
    prov = provenance(
        study, folder, command=command, host=host, today=today, code=code, name=name
    )
    new = {} if readme is False else {
        readme: replace_marked(
            readme.read_text(encoding="utf-8"),
            name,
            short_section(study, prov, folder, _anchor(name)),
            where=str(readme),
        ),
    }  # fmt: skip
    new.update({
        results_doc: replace_marked(
            results_doc.read_text(encoding="utf-8"),
            name,
            full_section(study, prov, folder),
            where=str(results_doc),
        ),
    })  # fmt: skip
    for path, text in new.items():
        path.write_text(text, encoding="utf-8")
    return name


def main(argv=None):
    """Command line: ``results_tables.py FOLDER [--study NAME] [--command TEXT]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a study's --output-dir (e.g. runs/study)")
    parser.add_argument(
        "--study", help="the block's name (default: the preset in results.md)"
    )
    parser.add_argument(
        "--command",
        help="the command that wrote the folder (default: the preset's own, "
        "with the recorded backend and this folder)",
    )
    parser.add_argument("--readme", help="default: README.md of this repository")
    parser.add_argument(
        "--docs-only",
        action="store_true",
        help="write the docs/results.md block only (the README has none for it)",
    )
    parser.add_argument("--results-doc", help="default: docs/results.md")
    parser.add_argument(
        "--machine", help="the machine in words (default: this one's CPUs and OS)"
    )
    args = parser.parse_args(argv)
    try:
        name = write(
            args.folder,
            study_name=args.study,
            command=args.command,
            readme=False if args.docs_only else args.readme,
            results_doc=args.results_doc,
            host=args.machine,
        )
    except (OSError, ValueError) as e:
        print(f"results_tables.py: {e}", file=sys.stderr)
        return 1
    pages = "docs/results.md" if args.docs_only else "README.md and docs/results.md"
    print(f"wrote the {name!r} blocks of {pages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
