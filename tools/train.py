"""Tune a video UNet on one clip: `python tools/train.py --config CONFIG [key=value ...]`
(the same as the installed `tuneavideo-train`; see tuneavideo_ms/commands/train.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tuneavideo_ms.commands.train import main  # noqa: E402

if __name__ == "__main__":
    main()
