"""Traffic protection and graceful degradation (issue 7): breakers, budgets, buckets, shedding."""
