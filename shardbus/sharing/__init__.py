"""Threshold sharing: the field, Shamir, IDA and the fragment layer built on them.

`fragmentation` is the entry point for the rest of shardbus. `gf256`,
`shamir` and `ida` are raw primitives without integrity protection, in the
way pyca/cryptography keeps its primitives under `hazmat`.
"""
