"""What is recorded and what it means: the prober (one program per client), the router recorders (FIB
and BGP capture), probe records, and the figures derived from them (pure, the one definition of shift,
gap and lost). Below :mod:`lab.run`, which reads catchments from the same records."""
