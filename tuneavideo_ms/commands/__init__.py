"""The command lines: tuneavideo-train, tuneavideo-edit (tools/train.py and tools/infer.py run the same) and
tuneavideo-evaluate (python -m tuneavideo_ms.evaluate)."""
