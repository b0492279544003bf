"""The command lines: tuneavideo-train, tuneavideo-edit (tools/train.py and tools/infer.py run the same)."""
