"""The topology model: a topology file (YAML, a dict or a script) → validated spec → resolved, addressed
model; timer profiles, graph checks and the catchment prediction, generators and placement over hosts.
Above the ground floor (:mod:`core`), below everything that renders or runs a topology."""
