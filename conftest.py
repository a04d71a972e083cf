"""Root conftest: plugins that must see every collected item, wherever it lives."""

pytest_plugins = ["tests._skip_guard"]
