package xdscmd

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metaproxy/metaproxy/pkg/cause"
	"github.com/metaproxy/metaproxy/pkg/osclient"
	"github.com/metaproxy/metaproxy/pkg/xds/source"
)

// keystoneAndNeutron is a Keystone that answers token requests with status (201: a token with
// roles) and a Neutron without any subnet, behind one clouds.yaml entry "lab".
func keystoneAndNeutron(t *testing.T, status int, roles string) {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/v3/auth/tokens" && status != http.StatusCreated:
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"error":{"code":%d,"message":"The request you have made requires authentication."}}`, status)
		case r.URL.Path == "/v3/auth/tokens":
			w.Header().Set("X-Subject-Token", "tok")
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, `{"token":{"methods":["application_credential"],"expires_at":"2099-01-01T00:00:00Z","user":{"id":"u","name":"metaproxy-xds"},
"project":{"id":"p","name":"service"},"roles":%s,"catalog":[{"type":"network","endpoints":[{"interface":"public","region_id":"RegionOne","url":%q}]}]}}`,
				roles, srv.URL+"/network/")
		case r.URL.Path == "/network/":
			fmt.Fprintf(w, `{"versions":[{"id":"v2.0","status":"CURRENT","links":[{"rel":"self","href":"%s/network/v2.0/"}]}]}`, srv.URL)
		case r.URL.Path == "/network/v2.0/subnets":
			fmt.Fprint(w, `{"subnets":[]}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	clouds := filepath.Join(t.TempDir(), "clouds.yaml")
	body := fmt.Sprintf("clouds:\n  lab:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: %s/v3\n      application_credential_id: ac\n      application_credential_secret: s\n    region_name: RegionOne\n", srv.URL)
	if err := os.WriteFile(clouds, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OS_CLIENT_CONFIG_FILE", clouds)
}

func newNeutronSource(t *testing.T) *neutronSource {
	t.Helper()
	network, err := osclient.New(osclient.Options{Cloud: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	return &neutronSource{network: network, opts: source.NeutronOptions{Mode: source.ModeAll, NodeID: "n1", Networks: true}}
}

// TestNeutronSourceSaysWhy: refused credentials and a view too small for the credentials' roles
// fail the poll with the cause and what to do; an admin's empty cloud is a successful poll.
func TestNeutronSourceSaysWhy(t *testing.T) {
	tests := map[string]struct {
		status    int
		roles     string
		wantCause cause.Cause
		wantMsg   string
	}{
		"refused credentials":     {status: http.StatusUnauthorized, wantCause: cause.Credentials, wantMsg: "Keystone refused the credentials"},
		"empty view, no admin":    {status: http.StatusCreated, roles: `[{"name":"advsvc"}]`, wantCause: cause.Forbidden, wantMsg: "needs the admin role"},
		"empty cloud as an admin": {status: http.StatusCreated, roles: `[{"name":"admin"},{"name":"member"}]`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			keystoneAndNeutron(t, tc.status, tc.roles)
			ns := newNeutronSource(t)
			_, err := ns.Networks(context.Background())
			c, _ := cause.Of(err)
			if tc.wantCause == "" {
				if err != nil || ns.why() != "" {
					t.Fatalf("poll: %v (why %q), want success", err, ns.why())
				}
				return
			}
			if c != tc.wantCause || !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(ns.why(), tc.wantMsg) {
				t.Fatalf("poll: %v (cause %q, why %q), want %s saying %q", err, c, ns.why(), tc.wantCause, tc.wantMsg)
			}
		})
	}
}
