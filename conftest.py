"""pytest entry point: the lab's plugin serves unit tests and scenarios."""

pytest_plugins = ["lab.pytest_plugin"]
