"""An optional economy of CPU graph compiles on Linux: compile in a forked child, share one graph among
the cells of a configuration, hand freed heap memory back to the system.

A graph that is not in the compile cache compiles in a forked copy of the process, which stores it and
exits; the process then loads it. MindSpore's compiler leaves memory behind in the heap for the rest of
the run (freed memory scattered among the compiled graph's objects, which malloc_trim cannot return),
and a loaded graph leaves none of it. A copy that compiles once can also let the cells of one
configuration share a graph (share_graphs), which a process compiling again could not.

The default path runs without any of it: where the child cannot run (not Linux, not CPU, msrun's workers,
TUNEAVIDEO_COMPILE_CHILD=off) the process compiles its graph itself. Graph sharing sets attributes private
to MindSpore's lazy inline, so it runs only on the MindSpore version it was measured on.
"""
import ctypes
import gc
import logging
import os
import signal
import sys
import time

import mindspore as ms

from tuneavideo_ms.runtime import devices
from tuneavideo_ms.runtime.graph_digest import model_digest

logger = logging.getLogger(__name__)

# the MindSpore versions whose private lazy-inline attributes (cell_init_args, no_inline) share_graphs sets
SHARING_MEASURED_ON = ("2.10.",)


def available() -> bool:
    """Whether compiles may run in a forked child here."""
    # Linux only (measured there; macOS's system libraries are unsafe in a forked child); Ascend's and GPU's
    # runtimes do not survive a fork; msrun's workers share their cluster's sockets
    return (os.environ.get("TUNEAVIDEO_COMPILE_CHILD", "on").lower() != "off" and sys.platform == "linux"
            and devices.device() == "CPU" and "MS_ROLE" not in os.environ)


def compile_and_store(cell, compile) -> bool:
    """Runs `compile` (of `cell`, inside the compile cache's scope) in a forked child that shares the
    graphs of `cell`'s repeated cells; returns whether the child stored the graph. False when the child
    cannot run here or failed: the caller's own compile then compiles (and meets any error itself)."""
    if not available():
        return False

    def compile_sharing_graphs():
        share_graphs(cell)  # safe here: the child compiles once, then exits
        compile()
    return compile_in_child(compile_sharing_graphs)


def share_graphs(cell) -> None:
    """Gives the sub-cells of `cell` whose class sets `shares_graph` one graph per configuration:
    MindSpore's lazy inline keyed by the sub-cell's digest without parameter names, so that a compile
    parses and type-infers each configuration once per input shape rather than each instance. For a
    process that compiles once: on a second compile of a shared graph at new shapes, MindSpore 2.10 has
    reshaped one call site's tensors to another's shape."""
    if not ms.__version__.startswith(SHARING_MEASURED_ON):
        logger.info("graph sharing is off: measured on MindSpore %s, this is %s",
                    " ".join(SHARING_MEASURED_ON), ms.__version__)
        return
    keys = []
    for _, sub in cell.cells_and_names():
        if getattr(sub, "shares_graph", False):
            sub.cell_init_args = "lazy_inline_" + model_digest(sub, names=False)
            # inlined by the frontend: lazy_inline's policy "front" (the other fails on CPU)
            sub.no_inline = False
            keys.append(sub.cell_init_args)
    if keys:
        logger.info("%d cells share %d graphs", len(keys), len(set(keys)))


def compile_in_child(compile) -> bool:
    """Runs `compile` in a forked copy of this process and returns whether it succeeded. The copy exits at
    once, with whatever its compile left behind."""
    start = time.perf_counter()
    return_freed_memory()  # the parent's freed pages would stay resident beside the child's compile
    gc.freeze()  # else the child's collections write to, and so copy, every page of the parent's objects
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _die_with(parent)
            compile()
            code = 0
        finally:
            os._exit(code)  # skips atexit handlers and the buffers this process inherited
    gc.unfreeze()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        logger.info("compiled in a child process in %.1f s; loading the graph it stored",
                    time.perf_counter() - start)
    else:
        logger.warning("compiling in a child process failed (exit status %d); compiling here", code)
    return code == 0


def _die_with(parent):
    """Asks Linux to kill this (forked) process when its parent dies, so a compile never outlives the run
    that wanted it (an interrupted or killed run)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def return_freed_memory() -> None:
    """Hands the memory the compiler freed back to the system, which glibc would otherwise keep resident
    for the rest of the run. A no-op on other C libraries."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)
