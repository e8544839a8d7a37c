"""nnserve training: build, fit and export the architectures of a deep-learning course."""
