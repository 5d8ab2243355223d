"""Register Neutron agents in neutron-server's database as their state reports do, or make them
look dead, with neutron's own server-side code (neutron/db/agents_db.py create_or_update_agent and
update_agent, as neutron/tests/common/helpers.py register_dhcp_agent and kill_agent use them). No
agent process runs in the e2e suite: neutron-server then lists these agents and accepts scheduling
to them as it does for real ones.

usage: /usr/bin/python3 neutron_agents.py NEUTRON_CONF register 'DHCP agent'|'L3 agent' HOST...
       /usr/bin/python3 neutron_agents.py NEUTRON_CONF kill AGENT_ID...
register prints {"HOST": "AGENT_ID", ...} as JSON.
"""
import datetime
import json
import sys

from neutron.common import config
from neutron.db import agents_db
from neutron_lib import context
from oslo_utils import timeutils

# What the agents report (neutron/agent/dhcp/agent.py, neutron/agent/l3/agent.py state reports).
AGENTS = {
    "DHCP agent": {"binary": "neutron-dhcp-agent", "topic": "dhcp_agent",
                   "configurations": {"dhcp_driver": "neutron.agent.linux.dhcp.Dnsmasq", "networks": 0}},
    "L3 agent": {"binary": "neutron-l3-agent", "topic": "l3_agent",
                 "configurations": {"agent_mode": "legacy", "handle_internal_only_routers": True,
                                    "gateway_external_network_id": "", "routers": 0}},
}


def main():
    conf, op, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    config.register_common_config_options()
    config.init(["--config-file", conf])
    ctx = context.get_admin_context()
    plugin = agents_db.AgentDbMixin()
    if op == "register":
        agent_type, hosts = args[0], args[1:]
        ids = {}
        for host in hosts:
            state = dict(AGENTS[agent_type], agent_type=agent_type, host=host, availability_zone="nova")
            plugin.create_or_update_agent(ctx, state, timeutils.utcnow())
            ids[host] = plugin._get_agent_by_type_and_host(ctx, agent_type, host)["id"]
        print(json.dumps(ids))
        return 0
    if op == "kill":
        hour_ago = timeutils.utcnow() - datetime.timedelta(hours=1)
        for agent_id in args:
            plugin.update_agent(ctx, agent_id, {"agent": {"started_at": hour_ago, "heartbeat_timestamp": hour_ago}})
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
