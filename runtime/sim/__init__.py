"""The deterministic simulator (`sim`): a fake LLM for testing strategies without a GPU.

* `load_task` / `SimTask`: the task file (DESIGN §6; format in `ttcdsl.runtime.sim.task`).
* `SimBackend`: the simulator as an in-process `Backend`.
* `SimConfig` (with `Latency` and `Faults`): timing model, fault injection, radix capacity,
  seeds; everything is off / instant by default.
* `ttcdsl.runtime.sim.server`: the same engine behind SGLang's HTTP protocol (`ttc sim serve`,
  `running_server` for tests).
* What the model writes, how samples follow ``answers`` exactly, and how the reward and judge
  scores work: `ttcdsl.runtime.sim.model`.
"""

from ttcdsl.runtime.sim.backend import SimBackend
from ttcdsl.runtime.sim.engine import Faults, Latency, SimConfig, SimEngine, SimStats
from ttcdsl.runtime.sim.task import Problem, SimTask, load_task

__all__ = [
    "Faults",
    "Latency",
    "Problem",
    "SimBackend",
    "SimConfig",
    "SimEngine",
    "SimStats",
    "SimTask",
    "load_task",
]
