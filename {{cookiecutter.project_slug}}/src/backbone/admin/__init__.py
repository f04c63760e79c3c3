"""Admin commands that act on a service from outside a node: replaying dead letters,
copying a stopped node's partition from a peer, accepting a lost partition."""
