"""anylab: pop_agent."""
