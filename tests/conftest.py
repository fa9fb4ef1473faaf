"""Every test imports the core files (gft, model, data, train) as top-level modules: put the
repository root on sys.path once, here, so pytest works from any working directory."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
