"""fedelta's Flower-free core: config, model and data, deltas, codec, registries, loops."""
