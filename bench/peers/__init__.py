"""Other stream processors, measured in the same run as the worker on the same input."""
