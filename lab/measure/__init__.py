"""Measuring: ``anylab measure`` (fault → record → restore, N runs) and its report and pictures, and the
topology drawings of ``anylab graph``."""
