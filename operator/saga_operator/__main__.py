"""`python -m saga_operator` / `saga-operator`: run the operator.

Exit status: 2 for settings that do not parse (the message names the variable), 1 when start-up fails for
a reason a wait does not fix (a port in use, a broker refusing the credentials, ...), with one CRITICAL
line on stderr saying why. Outages of the API server or Kafka do not end the process: it waits, not ready.
"""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from saga_operator import config
from saga_plumbing.tracing import TracingSettingsError, tracer_provider_from_env

log = logging.getLogger("saga_operator")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saga-operator", description="Run the saga execution coordinator.")
    parser.add_argument(
        "--namespace",
        default=None,
        help="watch Sagas in this namespace only (default: SAGA_NAMESPACE, else all namespaces)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "kopf.objects", "kopf.activities", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    try:
        settings = config.load(**({} if args.namespace is None else {"namespace": args.namespace}))
    except config.InvalidSettings as exc:
        log.critical("saga-operator cannot start: %s", exc)
        sys.exit(2)

    try:
        # OpenTelemetry's own OTEL_* variables; None (the default: none set) is tracing off.
        tracer_provider = tracer_provider_from_env("saga-operator")
    except TracingSettingsError as exc:
        log.critical("saga-operator cannot start: %s", exc)
        sys.exit(2)

    import saga_operator.runtime.handlers  # noqa: F401 - registers the Kopf handlers

    try:
        kopf.run(
            standalone=True,  # one active replica (Deployment strategy Recreate); see docs/architecture.md
            clusterwide=not settings.namespace,
            namespaces=[settings.namespace] if settings.namespace else (),
            memo=kopf.Memo(settings=settings, tracer_provider=tracer_provider),
        )
    except Exception as exc:
        failure = _start_up_failure(exc)
        if failure is None:
            raise
        log.critical("saga-operator cannot start: %s", failure)
        sys.exit(1)


def _start_up_failure(exc: BaseException) -> str | None:
    """The start-up handler's PermanentError (runtime.handlers), if that is what ended Kopf."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kopf.PermanentError):
            return str(cause)
        cause = cause.__cause__
    return None


if __name__ == "__main__":
    main()
