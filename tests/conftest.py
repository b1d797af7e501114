pytest_plugins = ["saga_testenv.pytest_plugin"]
