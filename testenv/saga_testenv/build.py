"""Build (once) and cache the local stack's server binaries.

Layout, all under ``${XDG_CACHE_HOME:-~/.cache}/saga-operator/testenv/v<CACHE_LAYOUT_VERSION>/``::

    kubernetes-<version>/bin/kube-apiserver
    kubernetes-<version>/bin/kube-controller-manager
    etcd-<version>/bin/etcd
    kafka-<version>-log4j-<version>/libs/*.jar
    kafka-tools-<version>/libs/kafka-tools-<version>.jar   Kafka's admin tools (the ACL tool), run on the
                                                          broker's classpath plus this one jar
    src/<component>/            the throwaway Go wrapper modules and the Maven pom used to build them
    logs/build-<component>.log  full output of the last build of each component

Only what is missing is built. Binaries are built into a temporary name and renamed into place, so an
interrupted build never leaves a half-written binary that a later run would trust. A file lock serialises
two processes (say ``make up`` and a test run) that both find the cache empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import versions

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """A component could not be built; the message names the log file with the details."""


def _default_log(message: str) -> None:
    print(f"[testenv] {message}", flush=True)


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/saga-operator/testenv``: every layout version lives below it."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "saga-operator" / "testenv"


def cache_dir() -> Path:
    """The cache directory of the current layout version."""
    return cache_root() / f"v{versions.CACHE_LAYOUT_VERSION}"


@dataclass(frozen=True)
class Artifacts:
    """Where the cached artifacts are (or will be once built)."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kafka_libs: Path
    #: Only the kafka-tools jar (``org.apache.kafka.tools.AclCommand`` lives there since Kafka 4.0); its
    #: dependencies are on the broker's classpath already, so the tools run with ``kafka_libs/*`` + this.
    kafka_tools: Path

    def missing(self) -> list[str]:
        out = [
            name
            for name, path in (
                ("etcd", self.etcd),
                ("kube-apiserver", self.kube_apiserver),
                ("kube-controller-manager", self.kube_controller_manager),
            )
            if not (path.is_file() and os.access(path, os.X_OK))
        ]
        if not (self.kafka_libs / ".complete").is_file():
            out.append("kafka")
        if not (self.kafka_tools / ".complete").is_file():
            out.append("kafka-tools")
        return out

    def kafka_tools_classpath(self) -> str:
        """The JVM classpath of Kafka's command-line tools (kafka-configs, kafka-acls, kafka-storage)."""
        return f"{self.kafka_libs}/*:{self.kafka_tools}/*"


def artifacts() -> Artifacts:
    root = cache_dir()
    kube = root / f"kubernetes-{versions.KUBERNETES_VERSION}" / "bin"
    return Artifacts(
        etcd=root / f"etcd-{versions.ETCD_VERSION}" / "bin" / "etcd",
        kube_apiserver=kube / "kube-apiserver",
        kube_controller_manager=kube / "kube-controller-manager",
        kafka_libs=root / f"kafka-{versions.KAFKA_VERSION}-log4j-{versions.LOG4J_VERSION}" / "libs",
        kafka_tools=root / f"kafka-tools-{versions.KAFKA_VERSION}" / "libs",
    )


@contextlib.contextmanager
def _locked(path: Path, log: Log) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is building the local stack (lock {path}); waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_built(log: Log | None = None) -> Artifacts:
    """Build whatever of the stack is missing from the cache and return where everything is."""
    log = log or _default_log
    wanted = artifacts()
    if not wanted.missing():
        return wanted
    with _locked(cache_dir() / ".build.lock", log):
        missing = wanted.missing()  # another process may have built it meanwhile
        if not missing:
            return wanted
        log(f"building into {cache_dir()}: {', '.join(missing)} (only the first time; later runs reuse it)")
        started = time.monotonic()
        if "kafka" in missing:
            _build_kafka(wanted.kafka_libs, log)
        if "kafka-tools" in missing:
            _build_kafka_tools(wanted.kafka_tools, log)
        if "etcd" in missing:
            _build_etcd(wanted.etcd, log)
        kube: list[str] = [n for n in ("kube-apiserver", "kube-controller-manager") if n in missing]
        if kube:
            _build_kubernetes(kube, wanted.kube_apiserver.parent, log)
        log(f"build finished in {_fmt_duration(time.monotonic() - started)}")
    left = wanted.missing()
    if left:
        raise BuildError(f"still missing after the build: {', '.join(left)}")
    return wanted


# --------------------------------------------------------------------------------------------------- Go


def _require(tool: str, hint: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise BuildError(f"`{tool}` is not on PATH: {hint}")
    return found


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env["GOTOOLCHAIN"] = versions.GOTOOLCHAIN
    flags = env.get("GOFLAGS", "").split()
    if not any(f.startswith("-mod=") for f in flags):
        flags.append("-mod=mod")
    env["GOFLAGS"] = " ".join(flags)
    return env


def _fmt_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _run_logged(
    argv: Sequence[str], cwd: Path, logfile: Path, env: dict[str, str], what: str, log: Log
) -> subprocess.CompletedProcess[str]:
    """Run a build step with its output appended to ``logfile``; print progress every 15 s."""
    with logfile.open("a") as out:
        out.write(f"\n$ {' '.join(argv)}   (in {cwd})\n")
        out.flush()
        started = time.monotonic()
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        stop = threading.Event()

        def report() -> None:
            while not stop.wait(15.0):
                compiled = _count_compiled(logfile)
                extra = f", {compiled} packages compiled so far" if compiled else ""
                log(f"  ... {what}: {_fmt_duration(time.monotonic() - started)}{extra}")

        ticker = threading.Thread(target=report, daemon=True)
        ticker.start()
        try:
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        finally:
            stop.set()
            ticker.join()
        out.write(f"# exit {rc} after {time.monotonic() - started:.1f}s\n")
    if rc != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-25:])
        raise BuildError(f"{what} failed (exit {rc}); full log: {logfile}\n{tail}")
    return subprocess.CompletedProcess(list(argv), rc)


def _count_compiled(logfile: Path) -> int:
    # `go build -v` prints one import path per package it compiles.
    try:
        text = logfile.read_text(errors="replace")
    except OSError:
        return 0
    last = text.rfind("\n$ ")
    lines = text[last:].splitlines()[1:] if last >= 0 else []
    return sum(1 for line in lines if line and not line.startswith(("go: ", "#", " ")))


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _install(built: Path, dest: Path) -> None:
    """Atomically put ``built`` at ``dest`` (same file system: both live in the cache)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(built, 0o755)
    os.replace(built, dest)


def _build_etcd(dest: Path, log: Log) -> None:
    _require("go", "install Go 1.26 (https://go.dev/doc/install) to build etcd and kube-apiserver")
    env = _go_env()
    src = _fresh_dir(cache_dir() / "src" / f"etcd-{versions.ETCD_VERSION}")
    logfile = _fresh_log("etcd")
    log(f"etcd {versions.ETCD_VERSION}: building from the Go module proxy (log: {logfile})")
    started = time.monotonic()
    _run_logged(["go", "mod", "init", "saga-testenv/etcd"], src, logfile, env, "go mod init", log)
    # etcd's server module has replace directives, so `go install mod@v` refuses it: build it as a
    # tool dependency of a wrapper module instead.
    _run_logged(["go", "get", "-tool", versions.go_module_etcd()], src, logfile, env, "go get etcd", log)
    tmp = src / "out" / "etcd"
    _run_logged(
        ["go", "build", "-trimpath", "-v", "-o", str(tmp), "go.etcd.io/etcd/server/v3"],
        src,
        logfile,
        env,
        "building etcd",
        log,
    )
    _install(tmp, dest)
    log(f"etcd {versions.ETCD_VERSION}: built in {_fmt_duration(time.monotonic() - started)} -> {dest}")


_STAGING_REPLACE = re.compile(r"^\s*(?:replace\s+)?(k8s\.io/[A-Za-z0-9._-]+)\s*=>\s*\./staging/", re.M)


def _build_kubernetes(names: Sequence[str], bindir: Path, log: Log) -> None:
    _require("go", "install Go 1.26 (https://go.dev/doc/install) to build etcd and kube-apiserver")
    env = _go_env()
    version = versions.KUBERNETES_VERSION
    src = _fresh_dir(cache_dir() / "src" / f"kubernetes-{version}")
    logfile = _fresh_log("kubernetes")
    log(
        f"Kubernetes {version}: building {' and '.join(names)} from the Go module proxy; the first build "
        f"takes minutes on 2 cores (log: {logfile})"
    )
    started = time.monotonic()
    _run_logged(["go", "mod", "init", "saga-testenv/kubernetes"], src, logfile, env, "go mod init", log)
    # k8s.io/kubernetes requires its staging modules at v0.0.0 via `=> ./staging/...` replace lines.
    # Read them from the module's own go.mod and replace each with the published version.
    info = subprocess.run(
        ["go", "mod", "download", "-json", versions.go_module_kubernetes()],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if info.returncode != 0:
        raise BuildError(f"go mod download {versions.go_module_kubernetes()} failed:\n{info.stdout}{info.stderr}")
    gomod = Path(json.loads(info.stdout)["GoMod"]).read_text()
    staging = sorted(set(_STAGING_REPLACE.findall(gomod)))
    if not staging:
        raise BuildError(f"found no ./staging replace lines in the go.mod of {versions.go_module_kubernetes()}")
    log(f"  {len(staging)} staging modules replaced by their {versions.KUBERNETES_STAGING_VERSION} releases")
    edit = ["go", "mod", "edit"] + [f"-replace={m}={m}@{versions.KUBERNETES_STAGING_VERSION}" for m in staging]
    _run_logged(edit, src, logfile, env, "go mod edit", log)
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in names]
    _run_logged(
        ["go", "get", "-tool", *[f"{p}@v{version}" for p in packages]], src, logfile, env, "go get kubernetes", log
    )
    outdir = src / "out"
    outdir.mkdir()
    # -pgo=off: profile-guided optimisation makes the compile several times slower on 2 cores.
    _run_logged(
        [
            "go",
            "build",
            "-trimpath",
            "-pgo=off",
            f"-ldflags={_kubernetes_ldflags()}",
            "-v",
            "-o",
            f"{outdir}/",
            *packages,
        ],
        src,
        logfile,
        env,
        f"building {' and '.join(names)}",
        log,
    )
    for name in names:
        _install(outdir / name, bindir / name)
    log(f"Kubernetes {version}: built in {_fmt_duration(time.monotonic() - started)} -> {bindir}")


def _kubernetes_ldflags() -> str:
    """Stamp the version as Kubernetes' own build does (hack/lib/version.sh); a module build otherwise
    reports ``v0.0.0-master+$Format:%H$``, which kubectl cannot even parse. ``-s -w`` drops debug info."""
    version = versions.KUBERNETES_VERSION
    major, minor, _ = version.split(".")
    values = {
        "gitVersion": f"v{version}",
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{name}={value}" for name, value in values.items()]
    return " ".join(flags)


def _fresh_log(component: str) -> Path:
    logfile = cache_dir() / "logs" / f"build-{component}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.write_text(f"# build of {component} started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return logfile


# ------------------------------------------------------------------------------------------------ Kafka

_MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>saga-testenv</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <!-- The broker tarball ships a log4j2 backend; the kafka POM does not. Kafka {kafka} uses
         slf4j-api 1.7, whose log4j2 binding is log4j-slf4j-impl. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


_TOOLS_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>saga-testenv</groupId>
  <artifactId>kafka-tools-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- The jar alone: what it needs (kafka-clients, server-common, jopt-simple, ...) is on the broker's
         classpath already, and the rest of its dependency tree (Kafka Connect, Jetty, Jersey) is for
         tools the stack never runs. -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>{kafka}</version>
      <exclusions>
        <exclusion>
          <groupId>*</groupId>
          <artifactId>*</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
  </dependencies>
</project>
"""


def _build_kafka(libs: Path, log: Log) -> None:
    pom = _POM.format(scala=versions.KAFKA_SCALA_VERSION, kafka=versions.KAFKA_VERSION, log4j=versions.LOG4J_VERSION)
    _fetch_jars("kafka", pom, f"kafka_{versions.KAFKA_SCALA_VERSION}-", libs, "the broker's jars", log)


def _build_kafka_tools(libs: Path, log: Log) -> None:
    pom = _TOOLS_POM.format(kafka=versions.KAFKA_VERSION)
    _fetch_jars("kafka-tools", pom, "kafka-tools-", libs, "the kafka-tools jar", log)


def _fetch_jars(component: str, pom: str, expected: str, libs: Path, what: str, log: Log) -> None:
    """``mvn dependency:copy-dependencies`` of ``pom`` into ``libs`` (atomically, marked complete)."""
    _require("mvn", "install Maven 3 (Debian: apt-get install maven) to fetch the Kafka broker")
    _require("java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)")
    src = _fresh_dir(cache_dir() / "src" / f"{component}-{versions.KAFKA_VERSION}")
    (src / "pom.xml").write_text(pom)
    logfile = _fresh_log(component)
    log(f"Kafka {versions.KAFKA_VERSION}: fetching {what} from Maven Central (log: {logfile})")
    started = time.monotonic()
    tmp = libs.parent / f".libs.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _run_logged(
        [
            "mvn",
            "-B",
            "-q",
            f"{_MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ],
        src,
        logfile,
        dict(os.environ),
        "mvn dependency:copy-dependencies",
        log,
    )
    jars = sorted(p.name for p in tmp.glob("*.jar"))
    if not any(j.startswith(expected) for j in jars):
        raise BuildError(f"Maven produced no {expected}*.jar; see {logfile}")
    (tmp / ".complete").write_text("\n".join(jars) + "\n")
    if libs.exists():
        shutil.rmtree(libs)
    os.replace(tmp, libs)
    log(f"Kafka {versions.KAFKA_VERSION}: {len(jars)} jars in {_fmt_duration(time.monotonic() - started)} -> {libs}")
