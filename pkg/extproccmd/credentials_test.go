package extproccmd

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/metaproxy/metaproxy/pkg/osclient"
)

// TestRefusedCredentialsAreClear runs the command with a clouds.yaml entry that Keystone refuses
// (HTTP 401): it starts anyway, /readyz answers 503 naming the refused credentials, VMs get 503
// with a body that says so, the failure is logged once (not once per VM), counted under
// cause="credentials", and Keystone is not asked once per VM request.
func TestRefusedCredentialsAreClear(t *testing.T) {
	var tokenPosts atomic.Int64
	keystone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/v3/auth/tokens" {
			tokenPosts.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":{"code":401,"title":"Unauthorized","message":"The request you have made requires authentication."}}`)
	}))
	defer keystone.Close()
	clouds := writeFile(t, "clouds.yaml", fmt.Sprintf("clouds:\n  lab:\n    auth:\n      auth_url: %s/v3\n      username: metaproxy-extproc\n      password: wrong\n      project_name: service\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n", keystone.URL))
	t.Setenv("OS_CLIENT_CONFIG_FILE", clouds)
	r := start(t, "--os-cloud", "lab")
	admin := r.admin

	var readyz string
	waitFor(t, func() bool {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		readyz = string(b)
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(readyz, "Keystone refused the credentials")
	})
	if !strings.Contains(readyz, `clouds.yaml entry "lab"`) {
		t.Errorf("/readyz %q does not say which credentials", readyz)
	}

	conn, err := grpc.NewClient(r.listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	const network = "aaaaaaaa-0000-4000-8000-00000000000a"
	for i := range 30 {
		resp := askVM(t, ctx, conn, network, fmt.Sprintf("10.0.0.%d", i+2))
		ir := resp.GetImmediateResponse()
		if ir == nil || ir.GetStatus().GetCode() != http.StatusServiceUnavailable || !strings.Contains(string(ir.GetBody()), "refuses the metadata proxy's credentials") {
			t.Fatalf("VM %d: %v, want 503 naming the credentials", i, resp)
		}
	}
	if got := strings.Count(r.logs.String(), "Neutron lookups fail"); got != 1 {
		t.Errorf("%d 'Neutron lookups fail' lines for 30 VMs and the probes, want 1:\n%s", got, r.logs)
	}
	if got := tokenPosts.Load(); got > 5 {
		t.Errorf("Keystone was asked %d times, want a few (failures are remembered for %s)", got, osclient.DefaultRetryAuthAfter)
	}
	fams := scrape(t, admin)
	if v := value(fams, MetricNeutronFailures, "cause=credentials"); v < 1 {
		t.Errorf("%s{cause=credentials} = %v, want the failures counted", MetricNeutronFailures, v)
	}
	if v := value(fams, MetricNeutronFailures, "cause=unreachable"); v != 0 {
		t.Errorf("%s{cause=unreachable} = %v, want 0", MetricNeutronFailures, v)
	}
}
