"""Compiled graphs kept on disk, so a second run loads its training step (or an inference run its
denoiser) instead of compiling it again.

MindSpore's compile cache is unsafe on its own (measured with 2.10): it files graphs by the order in which
a process compiles them and checks only the entry script's sources, so a different model, input shape or
constant, or graphs compiled in another order, load the wrong graph without an error. Here a graph gets
its own folder, named by a hash of everything the graph is made of: this package's sources, MindSpore's
version, the device and kernels, each cell's class and attributes (constant tensors by value, parameters
by name, shape, dtype and whether they train) and the inputs' shapes and dtypes. Parameter values are not
part of a graph, so a cached step trains whatever weights are loaded. One graph per process: MindSpore
keeps writing to the folder of the first cached compile, whatever the path says later, so later graphs
would share it by compile order again; they compile.

TUNEAVIDEO_COMPILE_CACHE names the folder (default ~/.cache/tuneavideo_ms/graphs); "off" turns the
cache off. On CPU a graph not in the cache yet compiles in a forked child (compile_child.py).
"""
import contextlib
import functools
import hashlib
import logging
import os
import shutil
import sys
from typing import Optional

import mindspore as ms

from tuneavideo_ms.runtime import compile_child, devices
from tuneavideo_ms.runtime.graph_digest import model_digest, signature, sources_digest
from tuneavideo_ms.runtime.paths import cache_home

logger = logging.getLogger(__name__)

_CACHE_VARIABLES = ("MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH")


class CompileCache:
    """The graphs' folder, `root` (None: off), and whether this process has had its cached compile."""

    def __init__(self, root: Optional[str]):
        self.root = root
        self.taken = False

    @classmethod
    def from_environment(cls) -> "CompileCache":
        root = os.environ.get("TUNEAVIDEO_COMPILE_CACHE") or os.path.join(cache_home(), "graphs")
        return cls(None if root.lower() == "off" else root)

    def folder(self, cell, inputs) -> str:
        """The folder of the graph of `cell` run on `inputs`."""
        runtime = devices.current()
        key = (ms.__version__, runtime.device, runtime.kernels.choice, ms.get_context("mode"),
               sources_digest(), model_digest(cell), [signature(x) for x in inputs])
        return os.path.join(self.root, hashlib.sha256(repr(key).encode()).hexdigest()[:32])

    @contextlib.contextmanager
    def scope(self, cell, inputs):
        """MindSpore's compile cache, in the folder of the graph of `cell` on `inputs`, for the compiles
        inside, if this process has not used it yet; nothing changes when the cache is off. Yields the
        folder, or None."""
        if self.root is None or self.taken:
            yield None
            return
        if not (sys.argv and os.path.isfile(sys.argv[0])):
            # MindSpore hashes the entry script with the graph and fails on `python -c`
            logger.info("compile cache off: the entry point %r is not a script file", sys.argv[:1])
            yield None
            return
        self.taken = True
        folder = self.folder(cell, inputs)
        logger.info("compile cache: %s", folder)
        # read at each compile; set_context's enable_compile_cache is deprecated
        saved = {name: os.environ.get(name) for name in _CACHE_VARIABLES}
        os.environ.update(MS_COMPILER_CACHE_ENABLE="1", MS_COMPILER_CACHE_PATH=folder)
        try:
            yield folder
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def holds_graph(folder: str) -> bool:
    """Whether `folder` holds a stored graph. One with an empty file (a writer killed mid-write, a full disk)
    is removed, so the graph compiles again and replaces it."""
    files = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
    if any(os.path.getsize(path) == 0 for path in files):
        logger.warning("compile cache: %s is incomplete (an empty file); compiling the graph again", folder)
        shutil.rmtree(folder, ignore_errors=True)
        return False
    return any(path.endswith(".mindir") for path in files)


_cache: Optional[CompileCache] = None


def compile_cache() -> CompileCache:
    """This process's compile cache (TUNEAVIDEO_COMPILE_CACHE, read when first asked)."""
    global _cache
    if _cache is None:
        _cache = CompileCache.from_environment()
    return _cache


class CachedCompile:
    """Mixed into a cell: its graph-mode compiles go through the compile cache. MindSpore calls `compile`
    on every call of a cell in graph mode and compiles only new input signatures; so does this, and says
    whether it compiles or loads (a compile takes a while; a progress bar's first step includes it)."""

    graph_name = "the graph"

    def compile(self, *args, **kwargs):
        inputs = list(args) + [kwargs[k] for k in sorted(kwargs)]
        key = tuple(signature(x) for x in inputs) + tuple(sorted(kwargs))
        seen = self.__dict__.setdefault("_compiled_signatures", set())
        if key in seen:
            super().compile(*args, **kwargs)
            return
        compile = functools.partial(super().compile, *args, **kwargs)
        with compile_cache().scope(self, inputs) as folder:
            if folder is None:
                logger.info("compiling %s", self.graph_name)
            elif holds_graph(folder):
                logger.info("loading %s, compiled by an earlier run", self.graph_name)
            else:
                logger.info("compiling %s (first run only: the compile cache keeps it)", self.graph_name)
                compile_child.compile_and_store(self, compile)
            compile()
        seen.add(key)
        compile_child.return_freed_memory()
