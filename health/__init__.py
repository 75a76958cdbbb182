"""anylab: health."""
