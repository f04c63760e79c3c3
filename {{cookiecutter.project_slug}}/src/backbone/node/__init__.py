"""One node of a service: the engine that composes its parts, one object per held
partition with its lifecycle, queries and routing."""
