"""Development tooling, never used by a running node: a local Kafka, service nodes as
child processes, and the in-process test driver."""
