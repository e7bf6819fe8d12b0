"""The site: its Flower ClientApp and its local state (version cache, residual)."""
