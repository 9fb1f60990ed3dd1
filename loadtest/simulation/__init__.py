"""A deterministic discrete-event simulator of the distribution model and the strategies it replaces.

Virtual clock, seeded randomness, simulated network delays and partitions. The distribution
strategy drives the real policy (`quota_common.policy`), the real center ledger and allocation
(`quota_center.ledger`, `quota_center.allocation`) and the real regional ledger
(`region_agent.ledger.local`), not copies of them. `quota simulate` runs every scenario.
"""
