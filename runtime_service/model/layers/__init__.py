"""Building blocks of the model: linear layers with their sharding rules, norms, rotary, attention."""
