"""Where the runtime keeps what it builds: the CPU kernels' library and the compiled graphs."""
import os


def cache_home() -> str:
    """This package's cache folder ($XDG_CACHE_HOME/tuneavideo_ms, else ~/.cache/tuneavideo_ms)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tuneavideo_ms")
