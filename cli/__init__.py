"""The ``snap`` command: thin click commands over the ``dedupe`` library."""
