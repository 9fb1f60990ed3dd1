"""Test support as code: real etcd and Redis servers on loopback, the center and agents as processes or in
process, and the helpers the test suites share. Used by tests and by the benchmarks in loadtest/."""
