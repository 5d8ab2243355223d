#!/usr/bin/python3
"""Read an OpenStack metadata service with cloud-init's own reader and print what it read as JSON.

Runs cloud-init's cloudinit.sources.helpers.openstack.MetadataReader (Debian package cloud-init),
the client VMs use, against BASE_URL (default http://169.254.169.254): read_v2(), which reads the openstack/<version>/ tree
and, as cloud-init does, the EC2 tree (MetadataReader has no read_v1: that is config drive). Prints
{"version", "metadata": {uuid, hostname, public_keys, ...}, "userdata_b64", "networkdata",
"vendordata", "ec2_metadata", "files"} on stdout. Exits 1 (message on stderr) when the reader
fails or a --require'd item is missing, 2 on bad usage. Run it with /usr/bin/python3 (Debian's).
"""
import argparse
import base64
import json
import logging
import sys


def jsonable(v):
    """Turns what the reader returns into JSON: bytes become {"base64": ...}."""
    if isinstance(v, bytes):
        return {"base64": base64.b64encode(v).decode()}
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://169.254.169.254", help="metadata base URL")
    p.add_argument("--timeout", type=float, default=5, help="per-request timeout (s)")
    p.add_argument("--retries", type=int, default=1, help="retries per request (cloud-init's)")
    p.add_argument("--require", default="",
                   help="comma-separated items that must be present: userdata,networkdata,vendordata,ec2")
    p.add_argument("--debug", action="store_true", help="cloud-init's debug log on stderr")
    args = p.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.debug else logging.WARNING)

    from cloudinit.sources.helpers import openstack

    reader = openstack.MetadataReader(args.url, timeout=args.timeout, retries=args.retries)
    try:
        res = reader.read_v2()
    except Exception as e:  # the reader's own failure is the result
        print("cloud-init reader failed: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1

    md = res.get("metadata", {})
    userdata = res.get("userdata")
    if isinstance(userdata, str):
        userdata = userdata.encode()
    out = {
        "version": res.get("version"),
        "metadata": jsonable(md),
        "userdata_b64": base64.b64encode(userdata).decode() if userdata else None,
        "networkdata": jsonable(res.get("networkdata")),
        "vendordata": jsonable(res.get("vendordata")),
        "ec2_metadata": jsonable(res.get("ec2-metadata")),
        "files": jsonable(res.get("files", {})),
    }
    missing = []
    for item in filter(None, (s.strip() for s in args.require.split(","))):
        key = {"userdata": "userdata_b64", "networkdata": "networkdata", "vendordata": "vendordata",
               "ec2": "ec2_metadata"}.get(item)
        if key is None:
            print("unknown --require item %r" % item, file=sys.stderr)
            return 2
        if not out[key]:
            missing.append(item)
    json.dump(out, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    if missing:
        print("cloud-init reader: missing %s" % ", ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
