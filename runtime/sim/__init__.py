"""The deterministic simulator (`sim`): a fake LLM for testing strategies without a GPU.

A self-contained package: it imports nothing from ``ttcdsl`` (only the standard library, anyio,
aiohttp and msgspec), so it can be read, served and tested on its own.  The runtime's
in-process adapter, `SimBackend`, lives with the other backends in
``ttcdsl.runtime.backends.sim``.

* `load_task` / `SimTask`: the task file (DESIGN §6; format in `.task`).
* `SimConfig` (with `Latency` and `Faults`): timing model, fault injection, radix capacity,
  seeds; everything is off / instant by default.
* `SimEngine`: the model, tokenizer, radix cache and counters behind both the adapter and the
  server.
* `.server`: the same engine behind SGLang's HTTP protocol (``ttc sim serve``, `running_server`
  for tests).
* `.errors`: `SimError` and its kinds (`TaskError`, `ConfigError`, `ServeError`,
  `SimRequestError`).
* What the model writes, how samples follow ``answers`` exactly, and how the reward and judge
  scores work: `.model`; reasoning problems (thinking curves, ``<think>`` tags, probes):
  `.reasoning`.  `SimTask.think_tags` says whether the task's samples think, and in which tags.
"""

from .engine import Faults, Latency, SimConfig, SimEngine, SimStats
from .errors import ConfigError, ServeError, SimError, SimRequestError, TaskError
from .task import Problem, SimTask, load_task

__all__ = [
    "ConfigError",
    "Faults",
    "Latency",
    "Problem",
    "ServeError",
    "SimConfig",
    "SimEngine",
    "SimError",
    "SimRequestError",
    "SimStats",
    "SimTask",
    "TaskError",
    "load_task",
]
