"""The one `quota` command: the servers, the budget owner's commands, and the demo, benchmarks, simulator and
chaos suite. The only package that sees every other."""
