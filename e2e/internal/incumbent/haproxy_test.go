//go:build e2e

package incumbent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestRender(t *testing.T) {
	tests := map[string]struct {
		c        Config
		want     []string
		wantErr  bool
		notWants []string
	}{
		"network": {
			c: Config{NetworkID: "net-1", AgentSocket: "/run/agent.sock", User: "nobody", Group: "nogroup", PidFile: "/tmp/net-1.pid.haproxy"},
			want: []string{"    bind 169.254.169.254:80\n", "    server metadata /run/agent.sock\n",
				"    http-request del-header X-Neutron-Router-ID\n", "    http-request set-header X-Neutron-Network-ID net-1\n",
				"    option forwardfor\n", "    log         /dev/log local0 info\n", "    user        nobody\n", "    pidfile     /tmp/net-1.pid.haproxy\n"},
			notWants: []string{"interface"},
		},
		"router with IPv6 and log to stdout": {
			c: Config{RouterID: "r-1", AgentSocket: "/s", Port: 9697, HostV6: "fe80::a9fe:a9fe", BindInterface: "qr-1", Log: "stdout format raw", User: "u", Group: "g"},
			want: []string{"    bind 169.254.169.254:9697\n", "    bind fe80::a9fe:a9fe:9697 interface qr-1\n",
				"    http-request del-header X-Neutron-Network-ID\n", "    http-request set-header X-Neutron-Router-ID r-1\n",
				"    log         stdout format raw local0 info\n"},
			notWants: []string{"pidfile"},
		},
		"both ids":  {c: Config{NetworkID: "n", RouterID: "r", AgentSocket: "/s"}, wantErr: true},
		"no id":     {c: Config{AgentSocket: "/s"}, wantErr: true},
		"no socket": {c: Config{NetworkID: "n"}, wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := tc.c.Render()
			if tc.wantErr {
				if err == nil {
					t.Fatalf("no error; config:\n%s", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in:\n%s", w, got)
				}
			}
			for _, w := range tc.notWants {
				if strings.Contains(got, w) {
					t.Errorf("unexpected %q in:\n%s", w, got)
				}
			}
		})
	}
}

// TestRenderValidates has haproxy itself check the configuration, where haproxy is installed.
func TestRenderValidates(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed")
	}
	dir := t.TempDir()
	cfg, err := Config{NetworkID: "0f0e0d0c-0000-4000-8000-000000000001", AgentSocket: filepath.Join(dir, "agent.sock"), Log: "stdout format raw"}.Render()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, cfg)
	}
}
