"""README.md and docs/*.md stay true: every file, function and test they cite exists, every
link between them resolves, the `python train.py ...` commands they give parse, the worked
example's numbers are the ones experiments/worked_example.py computes, the set-up commands are
the ones CI runs, and the GSM8K conversion snippet reproduces the shipped sample. Prose and
section titles are free to change."""
import ast
import glob
import importlib
import json
import os
import re
import shlex
import subprocess
import sys

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = {os.path.relpath(p, ROOT): open(p, encoding="utf-8").read()
        for p in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]}
README = DOCS["README.md"]
ALL = "\n".join(DOCS.values())

# `gft.py:group_advantages`, `model.py:GPT.generate`; not `x.py::test` (a test id) or `x.py: text`
FILE_REF = re.compile(r"((?:[\w-]+/)*[\w-]+\.py):(?!:)([A-Za-z_][\w.]*[A-Za-z_0-9])")
TEST_REF = re.compile(r"(tests/[\w-]+\.py)::([A-Za-z_]\w*)")
PATH_REF = re.compile(r"`((?:[\w.-]+/)*[\w-]+\.(?:py|md|jsonl|txt))`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _defines(path, dotted):
    """True if the file at path defines dotted (a function, class, method or assigned name)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    scope = tree.body
    for part in dotted.split("."):
        found = None
        for node in scope:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == part:
                found = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    found = node
        if found is None:
            return False
        scope = getattr(found, "body", [])
    return True


def _importable_attr(relpath, dotted):
    """Fallback for names made at import time: import the top-level module, follow the dots."""
    if "/" in relpath:
        return False
    try:
        obj = importlib.import_module(relpath[:-3])
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return True
    except (ImportError, AttributeError):
        return False


def test_every_code_reference_exists():
    refs = sorted(set(FILE_REF.findall(ALL)))
    assert len(refs) >= 10, f"expected the docs to cite code, found {refs}"
    missing = []
    for relpath, name in refs:
        path = os.path.join(ROOT, relpath)
        if not os.path.exists(path):
            missing.append(f"{relpath}:{name} (no file {relpath})")
        elif not (_defines(path, name) or _importable_attr(relpath, name)):
            missing.append(f"{relpath}:{name}")
    assert not missing, "the docs cite code that does not exist:\n  " + "\n  ".join(missing)


def test_every_test_reference_exists():
    refs = sorted(set(TEST_REF.findall(ALL)))
    assert len(refs) >= 5, f"expected the docs to cite tests, found {refs}"
    missing = []
    for relpath, name in refs:
        path = os.path.join(ROOT, relpath)
        if not os.path.exists(path):
            missing.append(f"{relpath}::{name} (no file {relpath})")
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        tests = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if name not in tests:
            missing.append(f"{relpath}::{name}")
    assert not missing, "the docs cite tests that do not exist:\n  " + "\n  ".join(missing)


def test_every_test_the_reliability_catalogue_names_exists():
    """tests/test_reliability.py opens with a catalogue of bad inputs and the tests that check each:
    every test it names (test_..., not a file test_....py; test_x_... a prefix) is defined under tests/."""
    with open(os.path.join(ROOT, "tests", "test_reliability.py"), encoding="utf-8") as f:
        catalogue = ast.get_docstring(ast.parse(f.read()))
    named = set(re.findall(r"\b(test_\w+)\b(?!\.py)", catalogue))
    assert len(named) >= 40, f"expected the catalogue to name its tests, found {sorted(named)}"
    defined = set()
    for path in glob.glob(os.path.join(ROOT, "tests", "*.py")):
        with open(path, encoding="utf-8") as f:
            defined |= {n.name for n in ast.parse(f.read()).body if isinstance(n, ast.FunctionDef)}
    missing = [n for n in named - defined if not (n.endswith("_") and any(d.startswith(n) for d in defined))]
    assert not missing, f"the catalogue names tests that do not exist: {sorted(missing)}"  # test_x_...: a prefix


def test_every_cited_repository_file_exists():
    """A path with a folder (`experiments/bench.py`, `data/example.jsonl`) or a top-level core file."""
    cited = {p for p in PATH_REF.findall(ALL) if "/" in p or os.path.exists(os.path.join(ROOT, p))}
    generated = ("results/", "out/")  # written by runs, not shipped
    missing = [p for p in sorted(cited) if not p.startswith(generated) and not os.path.exists(os.path.join(ROOT, p))]
    assert not missing, f"the docs cite files that do not exist: {missing}"


def _anchors(text):
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_every_link_between_the_docs_resolves():
    broken = []
    for name, text in DOCS.items():
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(name), path)) if path else name
            if not os.path.exists(os.path.join(ROOT, dest)):
                broken.append(f"{name}: {target} (no file {dest})")
            elif anchor and dest in DOCS and anchor not in _anchors(DOCS[dest]):
                broken.append(f"{name}: {target} (no heading #{anchor} in {dest})")
    assert not broken, "broken links:\n  " + "\n  ".join(broken)


def _commands(prefix):
    """Every command line in a code block of the docs that starts with prefix, comments removed."""
    out = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", ALL, re.M | re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(prefix):
                out.append(line)
    return out


def test_every_train_command_in_the_docs_parses():
    commands = _commands("python train.py")
    assert len(commands) >= 10, commands
    for c in commands:
        argv = shlex.split(c.split("&&")[0])[2:]
        if "--help" in argv:
            continue
        train.parse_args(argv)  # raises on an unknown or out-of-range setting


def test_every_setting_is_named_in_the_readme_settings_section():
    """A newcomer read the table for --ckpt_every and --digits and found neither; every Config field
    is now named there, in the table or in the line after it."""
    import dataclasses
    section = README[README.index("## Settings"):README.index("## The base model")]
    named = set(re.findall(r"`--(\w+)`", section))
    missing = {f.name for f in dataclasses.fields(train.Config)} - {"mode"} - named
    assert not missing, sorted(missing)


def test_every_script_the_docs_run_exists():
    scripts = {shlex.split(c)[1] for c in _commands("python ") if not c.startswith("python -")}
    missing = [s for s in sorted(scripts) if s.endswith(".py") and not os.path.exists(os.path.join(ROOT, s))]
    assert not missing, f"the docs run scripts that do not exist: {missing}"


def test_worked_example_output_appears_verbatim_in_readme():
    p = subprocess.run([sys.executable, os.path.join("experiments", "worked_example.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    printed = p.stdout.strip()
    assert printed in README, ("README.md's worked example differs from `python experiments/worked_example.py`; "
                               "paste the script's output into the README:\n" + printed)


def _ci_test_command():
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        lines = [l.strip() for l in f if "pytest" in l and not l.lstrip().startswith("#")]
    assert len(lines) == 1, f".ci/run should run pytest on exactly one line, found {lines}"
    return re.sub(r"^python3 ", "python ", lines[0])  # python3 and python are the same interpreter


def test_demo_output_in_readme_is_the_committed_log():
    """The README's demo block is results/demo.log (a fresh clone's `python train.py`), cut at "...":
    its lines appear there verbatim and in order, so the table cannot drift from a measured run."""
    section = README[README.index("## The demo's output"):]
    block = section.split("```")[1].strip("\n").splitlines()
    with open(os.path.join(ROOT, "results", "demo.log"), encoding="utf-8") as f:
        log = f.read().splitlines()
    shown = [line for line in block if line != "..."]
    assert len(shown) >= 8 and any(line.startswith("| gft |") for line in shown)
    at = 0
    for line in shown:
        assert line in log[at:], f"README's demo line is not in results/demo.log (after line {at}): {line!r}"
        at = log.index(line, at) + 1


def test_setup_commands_are_the_main_job_and_the_ci_test_command():
    blocks = [b.strip() for b in re.findall(r"^```[^\n]*\n(.*?)^```", README, re.M | re.S)]
    assert "pip install -r requirements.txt && python train.py" in blocks
    assert _ci_test_command() in blocks, f"README shows no block with what .ci/run runs: {_ci_test_command()!r}"
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        assert "-r requirements.txt" in f.read()  # CI installs what the README installs


def test_gsm8k_conversion_in_the_docs_reproduces_the_shipped_sample():
    m = re.search(r"```python\n(.*?def to_record.*?)```", ALL, re.S)
    assert m, "no python block in the docs defines to_record"
    namespace = {"__name__": "readme_snippet"}  # not __main__: the download part does not run
    exec(compile(m.group(1), "docs:to_record", "exec"), namespace)
    with open(os.path.join(ROOT, "data", "gsm8k_sample.jsonl"), encoding="utf-8") as f:
        records = [json.loads(l) for l in f]
    for rec in records:  # GSM8K's main solution is the expert, its socratic one the teacher
        assert namespace["to_record"](rec["prompt"], rec["expert"], rec["teachers"]) == rec, rec["prompt"]
