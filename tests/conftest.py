pytest_plugins = ["saga_localstack.pytest_plugin"]
