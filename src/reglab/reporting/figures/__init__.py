"""Every picture reglab draws: a run's fit, landscape and residuals, and a sweep's charts."""
