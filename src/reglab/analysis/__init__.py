"""Numbers about a model: metrics, the least-squares solver, the OLS report, the optimum."""
