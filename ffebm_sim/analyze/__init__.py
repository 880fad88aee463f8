"""What a circuit designer asks next: power, settling, energy per inference, conductance tables, a report.

``ffebm analyze MODEL --checkpoint CKPT --out DIR`` (:mod:`.cli`); the library:

* :func:`.power.element_powers`: every element's and source's power from node voltages, by kind and layer
  (a summary of :func:`ffebm_sim.elements.branch_power_w`);
* :func:`.phases.solve_phase`: ngspice's operating points of a phase, every node read, and their power balance;
* :mod:`.settling`: node capacitances, the transient deck, settling times;
* :mod:`.tables`: conductance CSVs, their round trip to a block spec's ``.npz``, pulse counts;
* :func:`.analysis.analyze_model`: the whole analysis, returned as files (written by
  :func:`.analysis.write_outputs`).
"""

from .analysis import AnalyzeOptions, analyze_model, write_outputs
from .power import PowerBreakdown, element_powers
from .settling import node_capacitances, settling_time, simulate_step
from .tables import read_table, table_csv

__all__ = ["AnalyzeOptions", "analyze_model", "write_outputs", "PowerBreakdown", "element_powers",
           "node_capacitances", "settling_time", "simulate_step", "read_table", "table_csv"]
