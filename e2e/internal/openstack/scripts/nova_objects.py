"""Create and delete nova instance rows with nova's own objects, as nova-compute would leave them.

A long-running helper: it pays the nova imports once, then reads one JSON request per line on stdin
and answers one JSON line on stdout ({"ok": true, ...} or {"error": "..."}). Anything else nova
prints goes to stderr. The first line it writes is {"ready": true}.

Requests:
  {"op": "create_instance", "uuid", "project_id", "user_id", "hostname", "display_name",
   "user_data" (base64 text, as nova stores it, or null), "metadata" {str: str},
   "keypairs" [{"name", "public_key", "type"}], "vif" {"port_id", "mac", "network_id",
   "network_name", "cidr", "gateway", "ip", "dhcp_server", "mtu"}}
  {"op": "delete_instance", "uuid"}

usage: /usr/bin/python3 nova_objects.py NOVA_CONF
"""
import json
import os
import sys
import traceback


def _network_info(model, project_id, v):
    """Builds the network_info nova's Neutron code caches for an instance with one port."""
    gateway = model.IP(address=v["gateway"], type="gateway") if v.get("gateway") else None
    subnet = model.Subnet(cidr=v["cidr"], dns=[], gateway=gateway, routes=[],
                          ips=[model.FixedIP(address=v["ip"])])
    if v.get("dhcp_server"):
        subnet["meta"]["dhcp_server"] = v["dhcp_server"]
    network = model.Network(id=v["network_id"], bridge="br-int", label=v.get("network_name") or "",
                            subnets=[subnet], tenant_id=project_id, mtu=v.get("mtu") or 1500,
                            physical_network=None, tunneled=False)
    vif = model.VIF(id=v["port_id"], address=v["mac"], network=network, type="ovs",
                    details={"port_filter": True}, devname=("tap" + v["port_id"])[:model.NIC_NAME_LEN],
                    ovs_interfaceid=v["port_id"], active=True, vnic_type="normal",
                    preserve_on_delete=False)
    return model.NetworkInfo([vif])


def create_instance(ctxt, objects, model, req):
    flavor = objects.Flavor(name="m1.tiny", flavorid="1", memory_mb=512, vcpus=1, root_gb=1,
                            ephemeral_gb=0, swap=0, rxtx_factor=1.0, vcpu_weight=0, disabled=False,
                            is_public=True, extra_specs={}, description=None)
    keypairs = [objects.KeyPair(name=k["name"], public_key=k["public_key"],
                                type=k.get("type") or "ssh", user_id=req["user_id"])
                for k in req.get("keypairs") or []]
    inst = objects.Instance(
        ctxt, uuid=req["uuid"], project_id=req["project_id"], user_id=req["user_id"],
        hostname=req["hostname"], display_name=req.get("display_name") or req["hostname"],
        host="compute1", node="compute1", vm_state="active", power_state=1,
        availability_zone="nova", launch_index=0, reservation_id="r-" + req["uuid"][:8],
        instance_type_id=1, memory_mb=512, vcpus=1, root_gb=1, ephemeral_gb=0,
        image_ref="155d900f-4e14-4e4c-a73d-069cbf4541e6", user_data=req.get("user_data"),
        metadata=req.get("metadata") or {}, system_metadata={}, flavor=flavor, old_flavor=None,
        new_flavor=None, key_name=keypairs[0].name if keypairs else None,
        key_data=keypairs[0].public_key if keypairs else None,
        keypairs=objects.KeyPairList(objects=keypairs))
    inst.create()
    # A NULL network_info makes the metadata API answer 500; nova-compute caches what Neutron says.
    vif = req.get("vif")
    inst.info_cache.network_info = (_network_info(model, req["project_id"], vif) if vif
                                    else model.NetworkInfo([]))
    inst.info_cache.save()
    return {"uuid": inst.uuid}


def delete_instance(ctxt, objects, req):
    objects.Instance.get_by_uuid(ctxt, req["uuid"]).destroy()
    return {"uuid": req["uuid"]}


def main():
    # Keep the protocol channel clean: whatever nova or its libraries print goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    from nova import config, context, objects
    from nova.network import model

    config.parse_args(["nova-objects", "--config-file", sys.argv[1]])
    objects.register_all()
    ctxt = context.get_admin_context()
    out.write(json.dumps({"ready": True}) + "\n")

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "create_instance":
                res = create_instance(ctxt, objects, model, req)
            elif op == "delete_instance":
                res = delete_instance(ctxt, objects, req)
            else:
                raise ValueError("unknown op %r" % op)
            res["ok"] = True
        except Exception as e:  # answer every request; the caller decides
            traceback.print_exc(file=sys.stderr)
            res = {"error": "%s: %s" % (type(e).__name__, e)}
        out.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
