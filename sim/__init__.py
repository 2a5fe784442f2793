"""bnnforge.sim: the bit-exact reference executor of the IR."""

from .reference import check_frames, reference

__all__ = ["reference", "check_frames"]
