//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/pkg/osclient"
)

// The clouds.yaml entries keystoneCredentials writes: each service's user with the grant
// docs/migrate-from-neutron-metadata-agent.md documents, once with its password and once with an
// application credential of that user.
const (
	cloudExtproc        = "metaproxy-extproc"
	cloudExtprocAppCred = "metaproxy-extproc-appcred"
	cloudXDS            = "metaproxy-xds"
	cloudXDSAppCred     = "metaproxy-xds-appcred"
)

// suiteAuth is the auth mode of the scenarios: Keystone, as in production, unless
// METAPROXY_E2E_AUTH=noauth asks for the fast mode (no Keystone, noauth Neutron over HTTP).
func suiteAuth(t *testing.T) openstack.Auth {
	if os.Getenv("METAPROXY_E2E_AUTH") == string(openstack.AuthNoauth) {
		return openstack.AuthNoauth
	}
	if err := openstack.KeystoneAvailable(); err != nil {
		t.Skipf("Keystone cannot run here (METAPROXY_E2E_AUTH=noauth runs without it): %v", err)
	}
	return openstack.AuthKeystone
}

// neutronCreds are the flags and environment with which cmd/extproc and cmd/xds reach Neutron.
type neutronCreds struct {
	extproc, xds []string // flags
	env          []string // environment of both (OS_CLIENT_CONFIG_FILE)
	cloudsYAML   string   // the clouds.yaml file; "" with noauth
	entries      map[string]clouds.Cloud
}

// neutronCredentials returns the noauth Neutron URL for both services, or, with Keystone, creates
// the users and application credentials of keystoneCredentials and selects the entries given.
func (e *env) neutronCredentials(ctx context.Context, extprocCloud, xdsCloud string) neutronCreds {
	e.t.Helper()
	if e.cloud.Auth() == openstack.AuthNoauth {
		flags := []string{"--neutron-url", e.cloud.NeutronURL()}
		return neutronCreds{extproc: flags, xds: flags}
	}
	path := filepath.Join(e.dir, "clouds.yaml")
	entries := keystoneCredentials(e.t, ctx, e.cloud)
	if err := openstack.WriteCloudsYAML(path, entries); err != nil {
		e.t.Fatal(err)
	}
	return neutronCreds{
		extproc: []string{"--os-cloud", extprocCloud}, xds: []string{"--os-cloud", xdsCloud},
		env: []string{"OS_CLIENT_CONFIG_FILE=" + path}, cloudsYAML: path, entries: entries,
	}
}

// addClouds adds entries to the suite's clouds.yaml (Keystone only).
func (e *env) addClouds(t *testing.T, entries map[string]clouds.Cloud) {
	t.Helper()
	for name, c := range entries {
		e.creds.entries[name] = c
	}
	if err := openstack.WriteCloudsYAML(e.creds.cloudsYAML, e.creds.entries); err != nil {
		t.Fatal(err)
	}
}

// keystoneCredentials creates what the migration guide tells an operator to create, and returns
// the clouds.yaml entries:
//
//	openstack user create --domain default --password ... metaproxy-extproc
//	openstack role add --project service --user metaproxy-extproc advsvc
//	openstack user create --domain default --password ... metaproxy-xds
//	openstack role add --project service --user metaproxy-xds admin
//	openstack application credential create --role advsvc metaproxy-extproc   (as metaproxy-extproc)
//	openstack application credential create --role admin metaproxy-xds        (as metaproxy-xds)
func keystoneCredentials(t *testing.T, ctx context.Context, cloud *openstack.Cloud) map[string]clouds.Cloud {
	t.Helper()
	entries := map[string]clouds.Cloud{}
	for _, g := range []struct{ user, role, password, appCredEntry string }{
		{cloudExtproc, "advsvc", "e2e-extproc-password", cloudExtprocAppCred},
		{cloudXDS, "admin", "e2e-xds-password", cloudXDSAppCred},
	} {
		u, err := cloud.CreateUser(ctx, openstack.UserSpec{Name: g.user, Password: g.password, Roles: []string{g.role}})
		if err != nil {
			t.Fatal(err)
		}
		ac, err := cloud.CreateAppCredential(ctx, u, g.user, []string{g.role}, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		entries[g.user] = cloud.PasswordCloud(u)
		entries[g.appCredEntry] = cloud.AppCredCloud(ac)
	}
	return entries
}

// extprocClient is a Neutron client with cmd/extproc's credentials, built by osclient as
// cmd/extproc builds its own.
func (e *env) extprocClient(t *testing.T, ctx context.Context) *gophercloud.ServiceClient {
	t.Helper()
	o := osclient.Options{NeutronURL: e.cloud.NeutronURL()}
	if e.creds.cloudsYAML != "" {
		t.Setenv("OS_CLIENT_CONFIG_FILE", e.creds.cloudsYAML)
		o = osclient.Options{Cloud: cloudExtproc}
	}
	client, err := osclient.NewNetworkClient(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	return client
}
