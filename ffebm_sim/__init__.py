"""ffebm-sim: analog energy blocks as SPICE netlists, co-simulated with torch.

See README.md for the commands and DESIGN notes for the physics.
"""

__version__ = "0.1.0"
