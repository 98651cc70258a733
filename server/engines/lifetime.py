"""vLLM's engine processes die with the server that started them.

vLLM's engine core has no parent-death check of its own (its workers watch a pipe to the engine
core, but the engine core watches nothing): a server killed with SIGKILL, or by the OOM killer,
leaves the engine core running and holding the base weights and KV cache, GBs, until someone
finds it. So every process the server starts arms the kernel's parent-death signal: a forked
one in an at-fork hook (vLLM forks its engine core by default, and a forked child does not load
plugins again), a spawned one when it loads loramux's vLLM plugin (`vllm_patches.register`). The
kernel then kills it the moment its parent goes, however the parent went.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

PARENT_ENV = "LORAMUX_SERVER_PID"  # set by the server before it starts vLLM
PR_SET_PDEATHSIG = 1
log = logging.getLogger(__name__)


_hooked = False


def mark_server() -> None:
    """In the server: name this process as the one whose death ends vLLM's processes."""
    global _hooked
    os.environ[PARENT_ENV] = str(os.getpid())
    if not _hooked:
        os.register_at_fork(after_in_child=die_with_parent)
        _hooked = True


def die_with_parent() -> bool:
    """In a vLLM child process: be SIGKILLed when the parent dies. True when armed.

    The death signal follows the parent *thread* that started this process; the server starts
    vLLM from its main thread or a long-lived executor thread, so it fires with the process.
    """
    server = os.environ.get(PARENT_ENV)
    if server is None or int(server) == os.getpid() or not sys.platform.startswith("linux"):
        return False  # the server itself, or not a loramux server's engine
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("could not set a parent-death signal: errno %d", ctypes.get_errno())
        return False
    if os.getppid() == 1:  # the parent died before the line above took effect
        os._exit(1)
    return True


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (vLLM's engine core and workers, when there
    are some): what the server really holds, for the engine state and the soak's samples."""
    import psutil

    root = psutil.Process(pid)
    total = root.memory_info().rss
    for child in root.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return total
