"""bnnforge.sim: the bit-exact reference executor, the cycle-accurate timing model, FIFO sizing
and the energy model."""

from .energy import DEFAULT_COEFFICIENTS, count_operations, estimate_energy
from .fifo_sizing import SizeFifos, steady_cycles_per_frame
from .reference import check_frames, reference
from .timing import TimingResult, chain, simulate_timing

__all__ = ["reference", "check_frames", "TimingResult", "chain", "simulate_timing",
           "SizeFifos", "steady_cycles_per_frame",
           "DEFAULT_COEFFICIENTS", "count_operations", "estimate_energy"]
