"""The simulated plant: OPC UA line PLCs and serial loggers driven by seeded, labelled scenarios."""

from firmware_sim.generator import PlantGenerator
from firmware_sim.plant import SimulatedPlant
from firmware_sim.scenario import Scenario, load_scenario, streams_of
from firmware_sim.serial_logger import encode_frame

__all__ = ["PlantGenerator", "Scenario", "SimulatedPlant", "encode_frame", "load_scenario", "streams_of"]
