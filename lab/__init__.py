"""The lab: a topology brought up as namespaces, real routers and the platform's daemons, driven and measured.
The top floor; its own floors, top to bottom: cli, measure, load, run, faults | record (README, "Layout")."""
