"""Load generation and network emulation for benchmarks and fault tests (Locust users, the WAN proxy)."""
