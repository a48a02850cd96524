"""The walks of a Stack, one module per loop mode: each provides trace, new_cache and decode."""
