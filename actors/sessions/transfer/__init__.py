"""The ``transfer:<id>`` actor: deletes the caller's room once a merged call
transfer ends (S45). ``machine`` is the core, ``actor`` the shell, ``rooms``
the seam to the room service and its HTTP client."""
