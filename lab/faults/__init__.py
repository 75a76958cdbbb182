"""The fault catalogue: scenarios, targets and the plans that inject and undo them on a running lab."""
