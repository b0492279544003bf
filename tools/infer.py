"""Edit a clip with text: `python tools/infer.py --pretrained_model_path SD --video CLIP --prompts ...`
(the same as the installed `tuneavideo-edit`; see tuneavideo_ms/commands/edit.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tuneavideo_ms.commands.edit import main  # noqa: E402

if __name__ == "__main__":
    main()
