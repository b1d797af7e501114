"""saga-operator: a Kubernetes-native saga execution coordinator."""

__version__ = "0.1.0"
