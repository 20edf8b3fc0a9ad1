"""The console commands: reglab-train, reglab-eval, reglab-predict, reglab-sweep-report."""
