"""Stop signals: SIGINT / SIGTERM finish the current step, save a checkpoint and exit 128 + the signal,
with every process of a multi-process run stopping at the same step."""
from __future__ import annotations

import atexit
import multiprocessing
import signal
from typing import Any

import torch
from accelerate import Accelerator


class StopRequested:
    """SIGINT / SIGTERM set a flag; the loop finishes its step, saves a checkpoint and exits.

    Clusters (``docker stop``, Kubernetes, SLURM, systemd) signal the whole process group: the DataLoader
    workers ignore both signals (:func:`ignore_stop_signals`), so only the main process acts on them.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def agreed(self, accelerator: Accelerator, *, at_log_step: bool) -> bool:
        """Whether the run stops after this step. One process decides alone. Several must stop at the same
        step (a process waiting at the checkpoint's barrier while another runs the next step's collectives
        would hang), so they compare flags at log steps, where the loss is gathered anyway, and each takes
        the signal one of them received."""
        if accelerator.num_processes == 1:
            return self.requested
        if not at_log_step:
            return False
        signals = accelerator.gather(torch.tensor([self.signal or 0], device=accelerator.device))
        self.signal = int(signals.max()) or None
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            # A second Ctrl-C means "now". A repeated SIGTERM does not: torchrun forwards the one its
            # process group already delivered, and a cluster that will not wait escalates to SIGKILL.
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker leaves SIGINT / SIGTERM to the main process, which stops
    the run cleanly and then shuts its workers down (a worker killed by the group's signal would
    otherwise abort the loop before the checkpoint). A run that fails leaves the main process to kill them
    when it exits (:func:`_kill_leftover_workers`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _kill_leftover_workers() -> None:
    """At exit. When a run fails, the error's traceback keeps its DataLoader alive, and with it the workers; at
    exit multiprocessing ends daemonic children with SIGTERM, which these workers ignore, and then waits for them:
    the process would never end (a cluster job hanging until its time limit). Kill them first (without torch's
    SIGCHLD handler, which would raise "DataLoader worker killed" in the middle of it)."""
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join(timeout=5)


# Registered after multiprocessing's own exit handler (imported with torch above), so it runs before it.
atexit.register(_kill_leftover_workers)
