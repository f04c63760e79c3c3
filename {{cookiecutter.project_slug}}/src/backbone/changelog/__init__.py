"""The changelog: the reader that restores and tails stores, the writer of an active
partition, and the writer epochs that keep a zombie's records out of every store."""
