"""PF_KEY v2 codec and the SADB_ADD probe for strongSwan's kernel-pfkey.

``pfkeyv2`` encodes and decodes PF_KEY messages; ``probe`` asks the running
kernel which strongSwan-shaped SAs it accepts. Both use only the standard
library so the directory can be copied into a jail on its own. This module
imports nothing, so that ``python3 -m pfkey.probe`` runs the probe cleanly.
"""
