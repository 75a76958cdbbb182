"""anylab: bgp."""
