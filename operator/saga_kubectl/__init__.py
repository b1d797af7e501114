"""`kubectl saga`: a kubectl plugin for saga-operator's Sagas (the console script `kubectl-saga`).

Reads and patches Sagas through the Kubernetes API with the official client, as kubectl does: the same
kubeconfig, context and namespace. Never imports the operator's runtime: what it knows of a saga it reads
from the resource (the pydantic models of `saga_operator.domain`), what it draws is pure (`timeline`, `why`).
"""
