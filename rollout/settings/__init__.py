"""The run's configuration and the checks a launch makes before it starts."""
