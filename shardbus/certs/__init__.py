"""Certificates, Kafka ACLs and Redis users of a shardbus deployment.

    principals    the Kafka principal of each party (standard library only)
    authority     a small CA that issues one certificate per principal
    folder        the TLS folder: the CA and one identity per principal
    acls          which topics and groups each role may use
    acl_admin     creates and deletes those ACLs on the broker
    redis_users   one Redis ACL user per service role
    holders       short-lived holder certificates and ACLs, for the provisioner

The submodules are not imported here, so that importing `principals` does
not load ``cryptography``.
"""
