"""Every test imports the core files (gft, model, data, train) as top-level modules, and some import
helpers from tests/ (test_train, test_model, _faulty_train): put the repository root and tests/ on
sys.path once, here, so pytest works from any working directory and with any --import-mode (importlib
does not add tests/ itself)."""
import os
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
for path in (TESTS, ROOT):  # ROOT first on the path: inserted last
    if path not in sys.path:
        sys.path.insert(0, path)
