"""A deterministic simulated fleet with switchable faults (``fleetwatch simulate``).

``fleet`` draws the devices, ``faults`` plants the faults, ``run`` produces the messages.

May import: ``service.records``, ``service.errors``, ``detectors`` (for the built-in
battery curves).
"""

from service.simulator.faults import FAULTS, FaultSpec, PlantedFault
from service.simulator.run import SimMessage, SimulationConfig, Simulator, publish

__all__ = [
    "FAULTS",
    "FaultSpec",
    "PlantedFault",
    "SimMessage",
    "SimulationConfig",
    "Simulator",
    "publish",
]
