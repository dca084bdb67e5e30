"""Demo parts: the reference Authorization API, demo traffic, the embedded broker."""
