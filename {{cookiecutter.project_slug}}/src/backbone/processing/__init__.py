"""Folding input records into aggregates: the pure step (apply) and the Kafka loop."""
