"""A deterministic simulator of the distribution model and the strategies it replaces.

The distribution model is the servers' own code: a real `Center` on the in-memory store and real agents
on in-process ledgers, talking through the agents' `CenterPort` across a simulated network (delays, lost
and late messages, partitions) with agent crashes on the scenario's schedule, all on a virtual-time
asyncio loop (`quota_testing.virtual_time`). The strategies it replaces (central deduction, pre-allocation,
local deduction with asynchronous reports) are models on a discrete-event loop. A seed replays a run bit
for bit. `quota simulate` runs every scenario.
"""
