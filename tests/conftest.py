import os

# The transition to an authenticated broker (docs/operations.md, "Security"): the operator, the
# participant SDK and the harness do not speak SASL yet, so every stack this suite starts also opens the
# broker's loopback-only PLAINTEXT listener for them (`kafka_bootstrap` and KAFKA_BOOTSTRAP_SERVERS name
# it). Delete this line, and the Makefile's export of the same variable, once they have switched to
# `stack.kafka_security()`.
os.environ.setdefault("SAGA_TESTENV_KAFKA_PLAINTEXT_LISTENER", "1")

pytest_plugins = ["saga_testenv.pytest_plugin"]
