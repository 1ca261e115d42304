"""The subspace of a projected matrix: geometry (sides, project, map back, move moments),
selectors (which subspace), refresh (when), basis storage (dense / seed / packed), lifecycle
(allocation, refresh, switch policies) and the back-maps and residuals that bring the rule's
low-rank direction back to the weights. Nothing is imported here: ``groups`` reads the choices of
these modules and ``lifecycle`` reads ``groups``, so the modules are imported one by one."""
