"""A DICOM network node: send series to a PACS (C-STORE SCU, ``ctflow send``) and serve as
a C-STORE SCP that reconstructs what it receives and forwards the results (``ctflow serve``).

Modules: ``address`` (AE@HOST:PORT), ``store`` (C-STORE SCU), ``spool`` (on-disk spool and
series states), ``job`` (JOB.toml and the simulate-and-reconstruct job), ``worker`` (runs
jobs and forwarding), ``server`` (the SCP).
"""
