"""README.md stays true: every code reference it cites exists, the worked example's numbers are
the ones worked_example.py computes, its set-up commands are the ones CI runs, and its GSM8K
conversion snippet reproduces the shipped sample."""
import ast
import importlib
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as _f:
    README = _f.read()

# `gft.py:group_advantages`, `model.py:GPT.generate`; not `x.py::test` (a test id) or `x.py: text`
FILE_REF = re.compile(r"((?:[\w-]+/)*[\w-]+\.py):(?!:)([A-Za-z_][\w.]*[A-Za-z_0-9])")
TEST_REF = re.compile(r"(tests/[\w-]+\.py)::([A-Za-z_]\w*)")


def section(title):
    """The text of the README section whose '## ' heading starts with title."""
    m = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert m, f"README.md has no section '## {title}...'"
    return m.group(1)


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


def test_every_code_reference_in_readme_exists():
    refs = sorted(set(FILE_REF.findall(README)))
    assert len(refs) >= 10, f"expected the README to cite code, found {refs}"
    missing = []
    for relpath, name in refs:
        path = os.path.join(ROOT, relpath)
        if not os.path.exists(path):
            missing.append(f"{relpath}:{name} (no file {relpath})")
        elif not (_defines(path, name) or _importable_attr(relpath, name)):
            missing.append(f"{relpath}:{name}")
    assert not missing, "README.md cites code that does not exist:\n  " + "\n  ".join(missing)


def test_every_test_reference_in_readme_exists():
    refs = sorted(set(TEST_REF.findall(README)))
    assert len(refs) >= 5, f"expected the README to cite tests, found {refs}"
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
    assert not missing, "README.md cites tests that do not exist:\n  " + "\n  ".join(missing)


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


def test_setup_commands_are_the_main_job_and_the_ci_test_command():
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", section("Set-up"), re.M | re.S)
    commands = [b.strip() for b in blocks]
    assert len(commands) >= 2, f"the Set-up section should show two commands, found {commands}"
    assert commands[0] == "pip install -r requirements.txt && python train.py"
    assert commands[1] == _ci_test_command(), (f"README's test command {commands[1]!r} differs from "
                                               f"what .ci/run runs: {_ci_test_command()!r}")
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        assert "-r requirements.txt" in f.read()  # CI installs what the README installs


def test_readme_gsm8k_conversion_reproduces_the_shipped_sample():
    m = re.search(r"```python\n(.*?def to_record.*?)```", README, re.S)
    assert m, "README.md has no python block defining to_record"
    namespace = {"__name__": "readme_snippet"}  # not __main__: the download part does not run
    exec(compile(m.group(1), "README.md:to_record", "exec"), namespace)
    with open(os.path.join(ROOT, "data", "gsm8k_sample.jsonl"), encoding="utf-8") as f:
        records = [json.loads(l) for l in f]
    for rec in records:  # GSM8K's main solution is the expert, its socratic one the teacher
        assert namespace["to_record"](rec["prompt"], rec["expert"], rec["teachers"]) == rec, rec["prompt"]


def test_readme_keeps_the_sections_other_files_point_to():
    for title in ("Results", "The demo's output"):  # repro.py and the file map link here
        assert section(title).strip(), f"README.md section '## {title}' is empty"
