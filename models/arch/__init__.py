"""The networks: `ModelConfig`, the Flax decoder and its blocks, weight layouts, sharding rules."""
