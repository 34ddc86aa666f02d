"""Keys, authenticated encryption, HPKE envelopes and signatures for shardbus.

Every module wraps pyca/cryptography. `keys` derives per-purpose keys from
the master key, and `aead` seals fragments and stored blobs. `envelope`
seals messages to a public key (HPKE, RFC 9180), `signing` signs requests
with Ed25519, and `wipe` zeroes buffers where Python allows it.
"""
