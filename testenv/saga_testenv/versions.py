"""Every version the local stack depends on, pinned in one place.

Change a pin here and the next ``saga_testenv build`` (or ``make up`` / ``make test``) builds the new
binaries into a fresh cache directory; the old ones stay where they are until ``make clean-cache``.

Why these versions (checked against the registries these machines reach):

* Kubernetes 1.36.3: the Go module proxy serves its staging modules at v0.36.3, and its go.mod asks for
  go 1.26.0, so the installed Go 1.26 builds it without a toolchain download.
* etcd 3.6.x is the line Kubernetes 1.36 is tested with (envtest pairs 1.36 with 3.6.8); the proxy serves
  3.6.13 to 3.6.16, so the newest patch is taken.
* Kafka 4.1.1 from Maven Central (``kafka_2.13``); it pulls slf4j-api 1.7.x, so the log4j2 binding is
  ``log4j-slf4j-impl`` (the 1.x binding), not ``log4j-slf4j2-impl``.
"""

from __future__ import annotations

#: Bump when the layout of the cache changes in a way older code cannot read.
CACHE_LAYOUT_VERSION = 1

KUBERNETES_VERSION = "1.36.3"
#: k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...) at v0.0.0 with
#: ``=> ./staging/...`` replace lines; a consumer replaces each with this published version.
KUBERNETES_STAGING_VERSION = "v0.36.3"

ETCD_VERSION = "3.6.16"

KAFKA_VERSION = "4.1.1"
KAFKA_SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"

#: ``GOTOOLCHAIN`` for the builds: "local" means the installed go (1.26.x) and never a download. Set it to
#: e.g. "go1.27.3" if a future pin needs a newer Go than the machine has.
GOTOOLCHAIN = "local"

#: JVM options for the single broker on a 2-core machine.
KAFKA_JVM_OPTIONS = ("-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:-UsePerfData", "-Djava.awt.headless=true")


def go_module_kubernetes() -> str:
    return f"k8s.io/kubernetes@v{KUBERNETES_VERSION}"


def go_module_etcd() -> str:
    return f"go.etcd.io/etcd/server/v3@v{ETCD_VERSION}"
