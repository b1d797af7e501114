"""Adapters between the pure core and the outside world: the Kubernetes API and Kafka."""
