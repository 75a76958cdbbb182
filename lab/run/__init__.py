"""Running a lab: the :class:`~lab.run.lab.Lab` and what it is made of — what runs where (wiring), how it
starts (starts) and when it is ready (baseline), the network (the only Mininet importer), the daemons'
launchers, the controller holding a lab and its socket, scaling, cleanup, the run directory, observing a
running lab from any process, host limits, footprint, the autoscaler and the lab's origin service."""
