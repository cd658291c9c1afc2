"""SIGTERM on one host or on all of them: every process saves the same step.

One process: a Python SIGTERM handler sets the run's stop event and the step loop saves after
the step in flight.

Several processes (``jax.distributed``): a Python handler would make each host stop at whatever
step its own signal found it, and the collective save would then mix steps or hang. JAX's
preemption service agrees instead: its C++ notifier catches SIGTERM (a Python handler would
replace it, so none is installed), tells every process through the coordination service, and
``multihost_utils.reached_preemption_sync_point(n)`` returns True on every process at the same
call -- one past the furthest call any process had made when the notice arrived. The service
compares call numbers for equality and drops a notice that arrives before the first call, so
``arm()`` makes call 0 as soon as the processes are connected (``initialize``) and ``agreed()``
makes one call per training step, numbered by a counter every process advances alike (fine-tuning
runs several seeds in one process; their steps restart, this counter does not).

A process that dies without a notice (a lost VM, an OOM kill) is the coordination service's
heartbeat's job: the others abort after ``heartbeat_timeout_seconds`` instead of waiting in a
collective forever (``initialize``).
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils

_calls: int | None = None  # calls made to reached_preemption_sync_point by this process


def initialize(heartbeat_timeout_seconds: int = 100, **kwargs) -> None:
  """``jax.distributed.initialize`` (cluster auto-detection by default) and ``arm()``."""
  jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_seconds, **kwargs)
  arm()


def agreement_on() -> bool:
  """Whether this process is one of several that agree on SIGTERM (JAX's preemption service)."""
  return (jax.process_count() > 1 and jax.distributed.is_initialized()
          and bool(jax.config.jax_enable_preemption_service))


def arm() -> bool:
  """Call 0 of the sync protocol (once per process; idempotent). False when one process runs
  alone (a Python SIGTERM handler is enough) or the service is off."""
  global _calls
  if not agreement_on():
    return False
  if _calls is None:
    _calls = 0
    multihost_utils.reached_preemption_sync_point(0)
  return True


def agreed() -> bool:
  """One call per training step on every process: True on all of them at the same call once any
  process got SIGTERM."""
  global _calls
  arm()
  _calls += 1
  return multihost_utils.reached_preemption_sync_point(_calls)
