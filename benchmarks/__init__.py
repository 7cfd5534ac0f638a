"""Speed benchmarks: scripts that print a table and write JSON, with peers measured in the same run."""
