# Registers the calib-checks pytest plugin for runs from a source checkout. The installed package registers
# the same module through its `pytest11` entry point under the same name, so this is then a no-op.
pytest_plugins = ["calib_checks.plugin"]
