package agentini

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "metadata_agent.ini")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	tests := map[string]struct {
		ini  string
		want func(*Settings)
	}{
		"empty file gives neutron defaults": {ini: "", want: func(*Settings) {}},
		"a real agent file": {
			ini: `[DEFAULT]
state_path = /var/lib/neutron
metadata_proxy_shared_secret = s3cr3t
nova_metadata_host = nova1.example.org,nova2.example.org
nova_metadata_port = 8775
nova_metadata_protocol = https
nova_metadata_insecure = true
nova_client_cert = /etc/neutron/client.pem
nova_client_priv_key = /etc/neutron/client.key
auth_ca_cert = /etc/ssl/ca.pem
metadata_workers = 4
[metadata_rate_limiting]
rate_limit_enabled = True
ip_versions = 4, 6
base_window_duration = 20
base_query_rate_limit = 15
burst_window_duration = 5
burst_query_rate_limit = 30
[cache]
enabled = true
`,
			want: func(s *Settings) {
				s.SharedSecret = "s3cr3t"
				s.Nova = Nova{Host: "nova1.example.org,nova2.example.org", Port: 8775, Protocol: "https", Insecure: true,
					ClientCert: "/etc/neutron/client.pem", ClientKey: "/etc/neutron/client.key", CACert: "/etc/ssl/ca.pem"}
				s.RateLimit = RateLimit{Enabled: true, IPVersions: []int{4, 6}, BaseWindow: 20 * time.Second,
					BaseQueryRateLimit: 15, BurstWindow: 5 * time.Second, BurstQueryRateLimit: 30}
			},
		},
		"secret taken verbatim: no inline comment, no interpolation": {
			ini:  "[DEFAULT]\nmetadata_proxy_shared_secret = a#b;c %(x)s $y\n",
			want: func(s *Settings) { s.SharedSecret = "a#b;c %(x)s $y" },
		},
		"haproxy timeouts in seconds or durations": {
			ini: "[metadata_haproxy]\ntimeout_server = 120\ntimeout_client = 2m\n",
			want: func(s *Settings) {
				s.Haproxy.Server = 120 * time.Second
				s.Haproxy.Client = 2 * time.Minute
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Load(write(t, tc.ini))
			if err != nil {
				t.Fatal(err)
			}
			want := Default()
			tc.want(&want)
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("settings (-want +got):\n%s", d)
			}
		})
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	_, err := Load(write(t, `[DEFAULT]
nova_metadata_port = eighty
nova_metadata_protocol = ftp
nova_metadata_insecure = maybe
[metadata_rate_limiting]
ip_versions = 4,5
base_window_duration = soon
`))
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"nova_metadata_port", "nova_metadata_protocol", "nova_metadata_insecure", "ip_versions", "base_window_duration"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "nope.ini")); err == nil {
		t.Fatal("want an error for a missing file")
	}
}
