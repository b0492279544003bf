"""Compiled graphs kept on disk, so a second run loads every graph it compiled before (the training step,
the denoisers, the VAE and the text encoder) instead of compiling it again, in whatever order it asks.

MindSpore's compile cache is unsafe on its own (measured with 2.10): it numbers the graphs of a process
in the order it compiles them (`compile_cache_<n>.mindir`), keeps the folder of the process's first
cached compile whatever the path says later, and checks only the entry script's sources; so a different
model, input shape or constant, or graphs compiled in another order, load the wrong graph without an
error. Here MindSpore only ever sees a folder private to the process, the stage. Before the process's
n-th cached compile, the stage's slot n gets the stored graph of the cell and inputs about to compile
(MindSpore then loads it), or stays empty (MindSpore compiles and writes it, and the graph is stored).
A stored graph is a folder named by a hash of everything the graph is made of: this package's sources,
MindSpore's version, the device and kernels, each cell's class and attributes (constant tensors by value,
parameters by name, shape, dtype and whether they train) and the inputs' shapes and dtypes. Parameter
values are not part of a graph, so a cached step trains whatever weights are loaded.

TUNEAVIDEO_COMPILE_CACHE names the folder (default ~/.cache/tuneavideo_ms/graphs); "off" turns the
cache off. On CPU a graph not in the cache yet compiles in a forked child (compile_child.py).
"""
import atexit
import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
from typing import Dict, List, Optional

import mindspore as ms

from tuneavideo_ms.atomic import atomic_dir
from tuneavideo_ms.runtime import compile_child, devices
from tuneavideo_ms.runtime.graph_digest import model_digest, signature, sources_digest
from tuneavideo_ms.runtime.paths import cache_home

logger = logging.getLogger(__name__)

class CompileCache:
    """The stored graphs' folder, `root` (None: off), and this process's stage (created on first use)."""

    def __init__(self, root: Optional[str]):
        self.root = root
        self.stage = None
        self.compiles = 0  # the process's cached compiles so far: the number MindSpore gives the next

    @classmethod
    def from_environment(cls) -> "CompileCache":
        root = os.environ.get("TUNEAVIDEO_COMPILE_CACHE") or os.path.join(cache_home(), "graphs")
        return cls(None if root.lower() == "off" else root)

    def graph_folder(self, cell, inputs) -> str:
        """Where the graph of `cell` run on `inputs` is stored."""
        runtime = devices.current()
        key = (ms.__version__, runtime.device, runtime.kernels.choice, ms.get_context("mode"),
               sources_digest(), model_digest(cell), [signature(x) for x in inputs])
        return os.path.join(self.root, hashlib.sha256(repr(key).encode()).hexdigest()[:32])

    def usable(self) -> bool:
        if self.root is None:
            return False
        if not (sys.argv and os.path.isfile(sys.argv[0])):
            # MindSpore hashes the entry script with the graph and fails on `python -c`
            logger.info("compile cache off: the entry point %r is not a script file", sys.argv[:1])
            self.root = None
        elif os.environ.get("MS_COMPILER_CACHE_ENABLE") == "1":
            # MindSpore would number this process's every compile, not only these
            logger.info("compile cache off: MS_COMPILER_CACHE_ENABLE is set, MindSpore's own cache runs")
            self.root = None
        return self.root is not None

    def _graph_cache(self) -> str:
        """The folder MindSpore reads and writes this process's graphs in."""
        if self.stage is None:
            self.stage = tempfile.mkdtemp(prefix="tuneavideo-graphs-")
            # removed when the process ends; a killed process leaves it to the system's temporary files
            atexit.register(shutil.rmtree, self.stage, True)
        folder = os.path.join(self.stage, f"rank_{_rank()}", "graph_cache")
        os.makedirs(folder, exist_ok=True)
        return folder

    @contextlib.contextmanager
    def _enabled(self):
        """MindSpore's compile cache on, in the stage, for the compiles inside."""
        # read at each compile (set_context's enable_compile_cache is deprecated). MindSpore's own check of
        # a cached graph, a hash of the entry script's imports, fails in a new stage and is weaker than the
        # graph's key; without the check, a slot with no graph compiles as usual.
        values = dict(MS_COMPILER_CACHE_ENABLE="1", MS_COMPILER_CACHE_PATH=self.stage,
                      MS_DEV_FORCE_USE_COMPILE_CACHE="1")
        saved = {name: os.environ.get(name) for name in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def compile(self, cell, inputs, compile, name: str) -> None:
        """Runs `compile` (MindSpore's compile of `cell` on `inputs`): it loads the stored graph when there
        is one, and the graph it compiles is stored."""
        if not self.usable():
            logger.info("compiling %s", name)
            compile()
            return
        stored, stage, slot = self.graph_folder(cell, inputs), self._graph_cache(), self.compiles
        loading = holds_graph(stored)
        if loading:
            logger.info("loading %s, compiled by an earlier run", name)
            for file in os.listdir(stored):
                _link_or_copy(os.path.join(stored, file), os.path.join(stage, file.replace("#", str(slot))))
        else:
            logger.info("compiling %s (first run only: the compile cache keeps it)", name)
        try:
            with self._enabled():
                if not loading:
                    compile_child.compile_and_store(cell, compile)
                compile()
            self.compiles += 1
            written = _slot_files(stage)
            if set(written) != {slot} or not written[slot]:
                # MindSpore numbered this compile otherwise (it read and wrote another slot). The stage held
                # no other graph, so nothing wrong was loaded; with the numbering lost, the cache stops here.
                logger.warning("compile cache off: MindSpore did not number this compile %d", slot)
                self.root = None
            elif not loading:
                with atomic_dir(stored) as tmp:
                    for file in written[slot]:
                        shutil.copyfile(os.path.join(stage, file), os.path.join(tmp, file.replace(
                            f"{_SLOT_NAME}{slot}", f"{_SLOT_NAME}#", 1)))
                logger.info("compile cache: stored %s", stored)
        finally:
            # the stage holds only the files of the compile under way: a compile MindSpore numbers otherwise
            # finds nothing to load
            for files in _slot_files(stage).values():
                for file in files:
                    os.remove(os.path.join(stage, file))


# MindSpore's files of its n-th cached compile: compile_cache_<n>.mindir, and on some backends
# backend_compile_cache_<n>... files beside it
_SLOT_NAME = "compile_cache_"
_SLOT_FILE = re.compile(rf"{_SLOT_NAME}(\d+)(?!\d)")


def _slot_files(folder: str) -> Dict[int, List[str]]:
    """The names of MindSpore's graph files in `folder`, by the number of their compile."""
    files = {}
    for name in os.listdir(folder):
        match = _SLOT_FILE.search(name)
        if match:
            files.setdefault(int(match.group(1)), []).append(name)
    return files


def _rank() -> int:
    """The rank MindSpore names the stage's subfolder by: the worker's under msrun, else 0."""
    try:
        from mindspore.communication import get_rank
        return get_rank()
    except RuntimeError:  # no communication initialised: a single process
        return 0


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, target)


def holds_graph(folder: str) -> bool:
    """Whether `folder` holds a stored graph. One with an empty file (a full disk) is removed, so the graph
    compiles again and replaces it."""
    if not os.path.isdir(folder):
        return False
    files = [os.path.join(folder, name) for name in os.listdir(folder)]
    if not files or any(os.path.getsize(path) == 0 for path in files):
        logger.warning("compile cache: %s is incomplete; compiling the graph again", folder)
        shutil.rmtree(folder, ignore_errors=True)
        return False
    return True


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
        compile = functools.partial(super().compile, *args, **kwargs)
        if key in seen:
            compile()
            return
        compile_cache().compile(self, inputs, compile, self.graph_name)
        seen.add(key)
        compile_child.return_freed_memory()
