"""The README's and docs' code blocks, as a user runs them: a renamed parameter or flag breaks a
test here, not a user."""

from __future__ import annotations

import csv
import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, cli_argv

DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def _blocks(path: str, language: str) -> list[str]:
    with open(path) as f:
        return re.findall(rf"^```{language}\n(.*?)^```", f.read(), re.S | re.M)


@pytest.mark.slow
def test_every_python_block_runs_as_written_with_fewer_epochs(tmp_path):
    for path in DOCS:
        blocks = _blocks(path, "python")
        if not blocks:
            continue
        # The one change: 30 epochs become 1 (the harness's only edit of the text).
        code = "\n".join(blocks).replace("epochs=30", "epochs=1")
        # In a fresh folder: what a block saves lands there, not in the checkout.
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{os.path.relpath(path, ROOT)}:\n{proc.stderr[-3000:]}"
        if "train." in code:  # A block that trains shows what it trained.
            assert "'total'" in proc.stdout or "auroc" in proc.stdout, proc.stdout[-2000:]
        if 'logging.set_verbosity("info")' in code:  # The documented switch works.
            assert "epoch 1/1" in proc.stderr, proc.stderr[-2000:]


# Lines a user runs, and the module whose flags they take.
COMMAND = re.compile(r"(?:^|\s)(?:\S*python3? -m (\S+)|\./run\.sh)(?:\s|$)")


def _commands() -> list[tuple[str, str, list[str]]]:
    """(where, module, flags) of every command line in a bash block."""
    found = []
    for path in DOCS:
        for block in _blocks(path, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#")[0]
                match = COMMAND.search(line)
                if not match or line.strip().startswith("./run.sh test"):
                    continue
                module = match.group(1) or "experiments.main"
                if module in ("venv", "pip"):
                    continue
                flags = [f.split("=")[0][2:] for f in line.split() if f.startswith("--")]
                found.append((f"{os.path.basename(path)}: {line.strip()}", module, flags))
    return found


def test_every_command_in_the_docs_takes_the_flags_it_is_shown_with():
    commands = _commands()
    assert len(commands) > 10
    modules = sorted({m for _, m, _ in commands})
    helps = {m: subprocess.Popen(cli_argv(m, "--helpfull"), cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for m in modules}  # fmt: skip
    known = {}
    for module, proc in helps.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{module}: {err[-1000:]}"
        known[module] = set(re.findall(r"^\s+--(?:\[no\])?(\w+):", out, re.M))
    for where, module, flags in commands:
        for flag in flags:
            name = flag[2:] if flag.startswith("no") and flag[2:] in known[module] else flag
            assert name in known[module], f"{where}: --{flag} is not a flag of {module}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_reaches_a_file_and_heading():
    anchors = {}
    for path in DOCS:
        with open(path) as f:
            text = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)  # Not in code.
        anchors[os.path.abspath(path)] = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    checked = 0
    for path in DOCS:
        with open(path) as f:
            for target in re.findall(r"\]\(([^)\s]+)\)", f.read()):
                if target.startswith("http"):
                    continue
                file, _, anchor = target.partition("#")
                where = os.path.abspath(os.path.join(os.path.dirname(path), file) if file
                                        else path)  # fmt: skip
                assert os.path.exists(where), f"{os.path.basename(path)}: {target}"
                if anchor:
                    assert anchor in anchors[where], f"{os.path.basename(path)}: {target}"
                checked += 1
    assert checked > 20


def _tables_script():
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("tables", os.path.join(ROOT, "scripts",
                                                                          "tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_results_tables_are_the_ones_their_files_give():
    tables = _tables_script()
    used = set()
    for path in DOCS:
        with open(path) as f:
            text = f.read()
        used |= set(tables.BLOCK_NAMES.findall(text))
        assert tables.render(text) == text, (
            f"{os.path.relpath(path, ROOT)}: a table differs from experiments/results; "
            "run python scripts/tables.py")
    assert used == set(tables.TABLES), set(tables.TABLES) ^ used
    # One cell against its file, computed here from the CSV rows: MNIST's seed-spec AE.
    with open(os.path.join(ROOT, "experiments", "results", "selection_e30", "sweep.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == "ae" and r["smoothing"] == "0.0"]
    per_seed = {s: np.mean([float(r["auroc"]) for r in rows if r["seed"] == s])
                for s in {r["seed"] for r in rows}}  # fmt: skip
    mean, std = np.mean(list(per_seed.values())), np.std(list(per_seed.values()))
    assert f"| {tables.num(mean)} +- {tables.num(std)} |" in tables.TABLES["mnist"]()


# A date of work, a diary phrase, a commit hash: history, which belongs to `git log`.
DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b|\b(?:January|February|March|April|May|June|July|"
                  r"August|September|October|November|December) 20\d\d\b")
HASH = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
DIARY = re.compile(r"\b(?:so far|was then|on this machine|this session|this work|for now|"
                   r"no longer|not yet|until now|at the moment|former(?:ly)?|today|yesterday|"
                   r"issue \d+)\b", re.I)


def test_the_docs_state_what_is_not_when_it_became_so():
    found = []
    for path in DOCS:
        with open(path) as f:
            text = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)  # Code blocks.
        for line in text.splitlines():
            prose = re.sub(r"`[^`]*`|\([^)]*\.(?:md|png|json|py)[^)]*\)", "", line)
            hashes = HASH.findall(prose)
            # Commit hashes only as the selection protocol's evidence (benchmarks.md).
            if hashes and path.endswith("benchmarks.md") and re.search(r"\bcommits?\b", prose):
                hashes = []
            for what in (*DATE.findall(prose), *hashes, *DIARY.findall(prose)):
                found.append(f"{os.path.basename(path)}: {what!r} in {line.strip()[:80]!r}")
    assert not found, "\n".join(found)
