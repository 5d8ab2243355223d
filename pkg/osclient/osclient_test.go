package osclient

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/gophercloud/gophercloud/v2/openstack/networking/v2/networks"
)

// neutron answers GET /v2.0/networks and records the token it was sent.
func neutron(t *testing.T, gotToken *string) *http.ServeMux {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /network/v2.0/networks", func(w http.ResponseWriter, r *http.Request) {
		*gotToken = r.Header.Get("X-Auth-Token")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"networks":[{"id":"n1","name":"net1"}]}`)
	})
	mux.HandleFunc("GET /network/{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"versions":[{"id":"v2.0","status":"CURRENT","links":[{"rel":"self","href":"http://%s/network/v2.0/"}]}]}`, r.Host)
	})
	return mux
}

func listNames(t *testing.T, o Options) []string {
	t.Helper()
	c, err := NewNetworkClient(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	pages, err := networks.List(c, nil).AllPages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	all, err := networks.ExtractNetworks(pages)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range all {
		names = append(names, n.Name)
	}
	return names
}

func TestNoauthNeutronURL(t *testing.T) {
	var token string
	srv := httptest.NewServer(neutron(t, &token))
	defer srv.Close()
	for _, u := range []string{srv.URL + "/network", srv.URL + "/network/", srv.URL + "/network/v2.0"} {
		if got := listNames(t, Options{NeutronURL: u}); len(got) != 1 || got[0] != "net1" {
			t.Errorf("%s: networks %v", u, got)
		}
	}
}

func TestCloudsYAMLAuthenticatesWithKeystone(t *testing.T) {
	var token string
	mux := neutron(t, &token)
	var srv *httptest.Server
	mux.HandleFunc("POST /identity/v3/auth/tokens", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Subject-Token", "tok-123")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"token":{"expires_at":"2099-01-01T00:00:00Z","catalog":[{"type":"network","name":"neutron",
"endpoints":[{"interface":"public","region":"RegionOne","region_id":"RegionOne","url":%q}]}]}}`, srv.URL+"/network/")
	})
	srv = httptest.NewServer(mux)
	defer srv.Close()

	dir := t.TempDir()
	clouds := filepath.Join(dir, "clouds.yaml")
	yaml := fmt.Sprintf(`clouds:
  lab:
    auth:
      auth_url: %s/identity/v3
      username: metaproxy
      password: pw
      project_name: service
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
`, srv.URL)
	if err := os.WriteFile(clouds, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OS_CLIENT_CONFIG_FILE", clouds)
	if got := listNames(t, Options{Cloud: "lab"}); len(got) != 1 {
		t.Fatalf("networks %v", got)
	}
	if token != "tok-123" {
		t.Errorf("neutron saw token %q, want the one keystone issued", token)
	}
}

func TestOptionErrors(t *testing.T) {
	for _, v := range []string{"OS_CLOUD", "OS_AUTH_URL", "OS_CLIENT_CONFIG_FILE"} {
		t.Setenv(v, "")
	}
	tests := map[string]struct {
		o       Options
		wantErr error
	}{
		"nothing configured":  {o: Options{}, wantErr: ErrNoCredentials},
		"both cloud and url":  {o: Options{Cloud: "x", NeutronURL: "http://127.0.0.1:9696"}},
		"url without scheme":  {o: Options{NeutronURL: "127.0.0.1:9696"}},
		"unknown clouds.yaml": {o: Options{Cloud: "no-such-cloud"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Chdir(t.TempDir())
			_, err := NewNetworkClient(context.Background(), tc.o)
			if err == nil {
				t.Fatal("want an error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestCloudsYAMLTLSIsKeptWhenTransportIsWrapped: the CA of clouds.yaml verifies Keystone and
// Neutron even when the transport is wrapped (tracing), and every request goes through the wrapper.
func TestCloudsYAMLTLSIsKeptWhenTransportIsWrapped(t *testing.T) {
	var token string
	mux := neutron(t, &token)
	var srv *httptest.Server
	mux.HandleFunc("POST /identity/v3/auth/tokens", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Subject-Token", "tok-tls")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"token":{"expires_at":"2099-01-01T00:00:00Z","catalog":[{"type":"network","name":"neutron",
"endpoints":[{"interface":"public","region":"RegionOne","region_id":"RegionOne","url":%q}]}]}}`, srv.URL+"/network/")
	})
	srv = httptest.NewTLSServer(mux)
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	clouds := filepath.Join(dir, "clouds.yaml")
	yaml := fmt.Sprintf("clouds:\n  lab:\n    auth:\n      auth_url: %s/identity/v3\n      username: u\n      password: p\n      project_name: service\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    cacert: %s\n", srv.URL, ca)
	if err := os.WriteFile(clouds, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OS_CLIENT_CONFIG_FILE", clouds)
	var wrapped atomic.Int64
	o := Options{Cloud: "lab", WrapTransport: func(base http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) { wrapped.Add(1); return base.RoundTrip(r) })
	}}
	if got := listNames(t, o); len(got) != 1 || token != "tok-tls" {
		t.Fatalf("networks %v, token %q", got, token)
	}
	if wrapped.Load() < 2 {
		t.Errorf("%d requests went through the wrapper, want keystone's and neutron's", wrapped.Load())
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
