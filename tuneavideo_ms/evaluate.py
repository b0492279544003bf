"""`python -m tuneavideo_ms.evaluate`: the benchmark's metrics of edited videos (commands/evaluate.py)."""
from .commands.evaluate import main

if __name__ == "__main__":
    main(prog="python -m tuneavideo_ms.evaluate")
