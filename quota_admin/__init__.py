"""The center's admin API for people's tools: the `quota` command line and the web console both call it
through `quota_admin.client`, so they reach the same leader the same way and read the same refusals."""
