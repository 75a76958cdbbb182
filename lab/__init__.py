"""anylab: lab."""
