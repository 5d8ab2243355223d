package osclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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
