"""The lab's control plane: workers uploaded as content-hashed versions, deployed to PoPs or regions,
rolled back; PoP agents pull what they should run (see :mod:`pop_agent.sync`)."""
