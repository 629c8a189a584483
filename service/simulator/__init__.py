"""A deterministic simulated fleet with switchable faults (``fleetwatch simulate``).

``fleet`` draws the devices, ``faults`` plants the faults, ``run`` produces the messages.

The field simulator adds what a real fleet does under named realism profiles (``realism``:
the profiles; ``field_fleet``: models, payload dialects, climates, cell vendors, the radio
channel; ``field_faults``: the sensor faults and the ground truth with its mapping table;
``field_plan``: who gets which fault and what else happens; ``field_run``: the messages in
receive order).

May import: ``service.records``, ``service.errors``, ``detectors`` (for the built-in
battery curves).
"""

from service.simulator.faults import FAULTS, FaultSpec, PlantedFault
from service.simulator.field_faults import FAULT_KINDS, FaultKind, FieldEvent, TruthRecord
from service.simulator.field_run import FieldMessage, FieldSimulator, FieldStats
from service.simulator.realism import PROFILES, RealismProfile, profile
from service.simulator.run import SimMessage, SimulationConfig, Simulator, publish

__all__ = [
    "FAULTS",
    "FAULT_KINDS",
    "PROFILES",
    "FaultKind",
    "FaultSpec",
    "FieldEvent",
    "FieldMessage",
    "FieldSimulator",
    "FieldStats",
    "PlantedFault",
    "RealismProfile",
    "SimMessage",
    "SimulationConfig",
    "Simulator",
    "TruthRecord",
    "profile",
    "publish",
]
