"""What the center and the agent share, importing nothing else of ours: the domain model, the allocation
arithmetic (`policy`), the error tree, the clock, input limits, and how a server is served and configured."""
