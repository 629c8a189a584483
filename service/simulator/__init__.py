"""A deterministic simulated fleet with switchable faults (``fleetwatch simulate``)."""

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
