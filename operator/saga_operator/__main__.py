"""`python -m saga_operator` / `saga-operator`: run the operator."""

from __future__ import annotations

import argparse
import logging
import os

import kopf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saga-operator", description="Run the saga execution coordinator.")
    parser.add_argument(
        "--namespace",
        default=os.environ.get("SAGA_NAMESPACE", ""),
        help="watch Sagas in this namespace only (default: all namespaces; env SAGA_NAMESPACE)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    os.environ["SAGA_NAMESPACE"] = args.namespace
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "kopf.objects", "kopf.activities", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import saga_operator.runtime.handlers  # noqa: F401 - registers the Kopf handlers

    kopf.run(
        standalone=True,  # one active replica (Deployment strategy Recreate); see docs/architecture.md
        clusterwide=not args.namespace,
        namespaces=[args.namespace] if args.namespace else (),
    )


if __name__ == "__main__":
    main()
