"""The messages each session actor accepts and sends.

A session actor knows other actors only by address and message: it may
import these contracts, never another actor's implementation. One module per
actor kind (``token``, ``datachannel``, ``audio``...), owned by that kind.
"""
