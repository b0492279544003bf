"""Tune-A-Video on MindSpore."""
import os

__version__ = "0.1.0"

# Quiet defaults for what users read as failures; each is the user's to set otherwise. MindSpore (GLOG_v=3:
# errors only) warns on import about every device plugin it cannot load (Ascend's libraries on a CPU
# machine) and on every compile-cache miss; transformers advises installing PyTorch, which this package
# does not use.
os.environ.setdefault("GLOG_v", "3")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
