"""The operator's command line (``anylab …``, :mod:`lab.cli.main`) and the demo."""
