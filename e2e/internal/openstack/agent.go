//go:build e2e

package openstack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"time"
)

// rabbitEnv keeps RabbitMQ, its Erlang cookie and its epmd inside BaseDir and on free ports.
func (c *Cloud) rabbitEnv() []string {
	return []string{
		"HOME=" + c.path("rabbit/home"),
		"RABBITMQ_NODENAME=rabbit@localhost",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		fmt.Sprintf("RABBITMQ_NODE_PORT=%d", c.rabbitPorts[0]),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", c.rabbitPorts[1]),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		fmt.Sprintf("ERL_EPMD_PORT=%d", c.rabbitPorts[2]),
		"RABBITMQ_MNESIA_BASE=" + c.path("rabbit/mnesia"),
		"RABBITMQ_LOG_BASE=" + c.path("rabbit/log"),
		"RABBITMQ_CONFIG_FILE=" + c.path("rabbit/rabbitmq"),
		"RABBITMQ_ENABLED_PLUGINS_FILE=" + c.path("rabbit/enabled_plugins"),
	}
}

// startRabbit starts epmd (in the foreground, so we own its pid; otherwise erl spawns a detached
// `epmd -daemon`) and RabbitMQ, and waits for RabbitMQ's startup to complete.
func (c *Cloud) startRabbit(ctx context.Context) error {
	t0 := time.Now()
	epmd, err := startProcess("epmd", c.path("log/epmd.log"), nil, "/usr/bin/epmd",
		"-address", "127.0.0.1", "-port", fmt.Sprint(c.rabbitPorts[2]))
	if err != nil {
		return fmt.Errorf("openstack: %w", err)
	}
	c.mu.Lock()
	c.epmd = epmd
	c.mu.Unlock()
	rabbit, err := startProcess("rabbitmq-server", c.path("log/rabbitmq.out"), c.rabbitEnv(),
		"/usr/lib/rabbitmq/bin/rabbitmq-server")
	if err != nil {
		return fmt.Errorf("openstack: %w", err)
	}
	c.mu.Lock()
	c.rabbit = rabbit
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for {
		cmd := exec.CommandContext(ctx, "/usr/lib/rabbitmq/bin/rabbitmqctl", "-q", "await_startup")
		cmd.Env = append(os.Environ(), c.rabbitEnv()...)
		if cmd.Run() == nil {
			c.opts.Logf("openstack: rabbitmq answers after %s", time.Since(t0).Round(100*time.Millisecond))
			return nil
		}
		if done, err := rabbit.exited(); done {
			return fmt.Errorf("openstack: rabbitmq-server exited: %v", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("openstack: rabbitmq did not start: %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// startAgent starts neutron-metadata-agent and waits for its UNIX socket.
func (c *Cloud) startAgent(ctx context.Context) error {
	t0 := time.Now()
	before, _ := c.agentHeartbeat(ctx)
	if err := os.Remove(c.AgentSocket()); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("openstack: %w", err)
	}
	p, err := startProcess("neutron-metadata-agent", c.path("log/neutron-metadata-agent.out"), nil,
		"/usr/bin/neutron-metadata-agent", "--config-file", c.MetadataAgentINI(),
		"--log-file", c.path("log/neutron-metadata-agent.log"))
	if err != nil {
		return fmt.Errorf("openstack: %w", err)
	}
	c.mu.Lock()
	c.agent = p
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		// Ready once it listens and its first state report reached neutron-server over RPC.
		if fi, err := os.Stat(c.AgentSocket()); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if hb, ok := c.agentHeartbeat(ctx); ok && hb != before {
				c.opts.Logf("openstack: neutron-metadata-agent listens and reported after %s", time.Since(t0).Round(100*time.Millisecond))
				return nil
			}
		}
		if done, err := p.exited(); done {
			return fmt.Errorf("openstack: neutron-metadata-agent exited: %v", err)
		}
		select {
		case <-ctx.Done():
			return errors.Join(errors.New("openstack: neutron-metadata-agent socket did not appear"), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// agentHeartbeat returns the metadata agent's last state report time as neutron-server has it.
func (c *Cloud) agentHeartbeat(ctx context.Context) (string, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.NeutronURL()+"v2.0/agents?binary=neutron-metadata-agent", nil)
	if err != nil {
		return "", false
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	var body struct {
		Agents []struct {
			Heartbeat string `json:"heartbeat_timestamp"`
		} `json:"agents"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil || len(body.Agents) == 0 {
		return "", false
	}
	return body.Agents[0].Heartbeat, true
}
