//go:build e2e

package openstack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"text/template"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/applicationcredentials"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/endpoints"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/projects"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/roles"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/services"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/users"
	"go.yaml.in/yaml/v3"
)

// Auth says how neutron-server authenticates API requests.
type Auth string

const (
	// AuthNoauth runs neutron-server with auth_strategy = noauth over plain HTTP: every request is
	// an admin request and no token is needed. The fast mode.
	AuthNoauth Auth = "noauth"
	// AuthKeystone adds Debian's Keystone (uwsgi, sqlite in WAL mode, fernet tokens) and runs
	// neutron-server with auth_strategy = keystone (keystonemiddleware). Keystone and neutron-server
	// serve HTTPS with a certificate of the fixture's private CA (CACert); nova's metadata API
	// calls Neutron with its own service user, as in a real cloud.
	AuthKeystone Auth = "keystone"
)

// Keystone names and secrets of the fixture. Only test credentials: the fixture's cloud lives on
// loopback for the length of a test.
const (
	// Region is the one region of the catalog.
	Region = "RegionOne"
	// ServiceProject is the project of the service users (neutron, nova, and whoever a test
	// creates with CreateUser without a project), as every deployment guide has it.
	ServiceProject = "service"
	// AdminUser, AdminPassword and AdminProject are keystone-manage bootstrap's cloud admin.
	AdminUser     = "admin"
	AdminPassword = "e2e-admin-password"
	AdminProject  = "admin"

	serviceUserPassword = "e2e-service-password"
)

var keystoneConf = template.Must(template.New("keystone.conf").Parse(`[DEFAULT]
log_file = {{.Base}}/log/keystone.log
[database]
# Keystone's threads write (tokens are not stored with fernet, but users, application credentials,
# assignments are): wait for sqlite's lock instead of failing. The file is in WAL mode. SQLAlchemy
# hands a connection back to the pool from another thread: sqlite must allow it.
connection = sqlite:///{{.Base}}/keystone/keystone.sqlite?timeout=60&check_same_thread=false
[token]
provider = fernet
expiration = {{.TokenExpiration}}
[fernet_tokens]
key_repository = {{.Base}}/keystone/fernet-keys
[fernet_receipts]
key_repository = {{.Base}}/keystone/fernet-keys
[identity]
# bcrypt's minimum cost: every password authentication of the suite would otherwise burn ~0.25 s of
# a shared CPU. Keystone checks passwords the same way at any cost.
password_hash_rounds = 4
`))

// keystonePrep creates or restores Keystone's database (schema, bootstrap's admin user, project
// and the admin, member and reader roles, region RegionOne) and writes new fernet keys.
func (c *Cloud) keystonePrep(ctx context.Context) error {
	conf := c.path("keystone/keystone.conf")
	dbs := dbSet{service: "keystone", pkg: "python3-keystone", files: []string{"keystone.sqlite"}}
	cache := c.cacheDir(dbs, "db_sync; bootstrap "+AdminUser+" "+AdminPassword+" "+AdminProject+" "+Region+"; rounds 4; WAL")
	// Keys first: bootstrap issues nothing, but refuses to run without them.
	if err := c.runStep(ctx, "keystone-fernet-setup", "/usr/bin/keystone-manage", "--config-file", conf,
		"fernet_setup", "--keystone-user", "root", "--keystone-group", "root"); err != nil {
		return err
	}
	if !c.restoreDBs(dbs, cache) {
		if err := c.runStep(ctx, "keystone-db-sync", "/usr/bin/keystone-manage", "--config-file", conf, "db_sync"); err != nil {
			return err
		}
		if err := c.runStep(ctx, "keystone-bootstrap", "/usr/bin/keystone-manage", "--config-file", conf, "bootstrap",
			"--bootstrap-username", AdminUser, "--bootstrap-password", AdminPassword,
			"--bootstrap-project-name", AdminProject, "--bootstrap-region-id", Region); err != nil {
			return err
		}
		// WAL (persistent in the file): readers do not block the writers.
		if err := c.runStep(ctx, "keystone-wal", Python, "-c",
			"import sqlite3,sys\nsqlite3.connect(sys.argv[1]).execute('PRAGMA journal_mode=WAL').fetchall()",
			c.path("keystone/keystone.sqlite")); err != nil {
			return err
		}
		c.saveDBs(dbs, cache)
	}
	return nil
}

// StartKeystone starts Keystone under uwsgi (after StopKeystone) and waits until it answers.
// The uwsgi request log (BaseDir/log/keystone-uwsgi.log) names each client's User-Agent, which
// KeystoneRequests reads.
func (c *Cloud) StartKeystone(ctx context.Context) error {
	if c.opts.Auth != AuthKeystone {
		return errors.New("openstack: Keystone runs only with Auth = AuthKeystone")
	}
	c.mu.Lock()
	if c.closed || c.keystone != nil {
		c.mu.Unlock()
		return errors.New("openstack: keystone already running or cloud closed")
	}
	p, err := startProcess("keystone", c.path("log/keystone-uwsgi.log"),
		[]string{"OS_KEYSTONE_CONFIG_FILES=" + c.path("keystone/keystone.conf")},
		"/usr/bin/uwsgi", "--plugin", "python3",
		"--https-socket", fmt.Sprintf("127.0.0.1:%d,%s,%s", c.keystonePort, c.ca.certFile, c.ca.keyFile),
		"--wsgi-file", "/usr/bin/keystone-wsgi-public", "--need-app",
		"--master", "--processes", "2", "--threads", "4", "--enable-threads", "--lazy-apps", "--die-on-term",
		// uwsgi's native HTTPS socket serves one request per connection but does not say so:
		// "Connection: close" keeps clients from reusing a connection it has closed.
		"--add-header", "Connection: close",
		"--buffer-size", "65535", "--log-format", `%(addr) %(method) %(uri) %(status) %(msecs)ms "%(uagent)"`)
	c.keystone = p
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("openstack: %w", err)
	}
	return c.waitHTTP(ctx, p, c.KeystoneURL())
}

// StopKeystone stops Keystone (SIGTERM, then SIGKILL after StopGrace).
func (c *Cloud) StopKeystone() { c.stopSlot(&c.keystone) }

// KeystoneURL is Keystone's identity v3 endpoint, like https://127.0.0.1:PORT/v3 (AuthKeystone).
func (c *Cloud) KeystoneURL() string { return fmt.Sprintf("https://127.0.0.1:%d/v3", c.keystonePort) }

// CACert is the PEM file of the private CA that signed Keystone's and Neutron's certificates
// (AuthKeystone): clouds.yaml's cacert.
func (c *Cloud) CACert() string { return c.ca.caFile }

// keystoneSetup does, as the cloud admin, what a deployment tool does after bootstrap: the service
// project, the neutron and nova service users (admin on it), the catalog (identity and network,
// every interface) and the roles Zed's bootstrap does not create (advsvc, service) that tests
// grant. It leaves c.admin (an authenticated admin provider that sees the catalog) and c.identity
// behind.
func (c *Cloud) keystoneSetup(ctx context.Context) error {
	adminAuth := gophercloud.AuthOptions{Username: AdminUser, Password: AdminPassword, DomainID: "default",
		Scope: &gophercloud.AuthScope{ProjectName: AdminProject, DomainID: "default"}}
	admin, err := c.authenticate(ctx, adminAuth)
	if err != nil {
		return fmt.Errorf("openstack: authenticate as the cloud admin: %w", err)
	}
	identity, err := openstack.NewIdentityV3(admin, gophercloud.EndpointOpts{})
	if err != nil {
		return fmt.Errorf("openstack: identity client: %w", err)
	}
	c.identity = identity
	if _, err := projects.Create(ctx, identity, projects.CreateOpts{Name: ServiceProject, DomainID: "default"}).Extract(); err != nil {
		return fmt.Errorf("openstack: create project %s: %w", ServiceProject, err)
	}
	for _, r := range []string{"advsvc", "service"} {
		if _, err := roles.Create(ctx, identity, roles.CreateOpts{Name: r}).Extract(); err != nil {
			return fmt.Errorf("openstack: create role %s: %w", r, err)
		}
	}
	for _, u := range []string{"neutron", "nova"} {
		if _, err := c.CreateUser(ctx, UserSpec{Name: u, Password: serviceUserPassword, Roles: []string{"admin"}}); err != nil {
			return err
		}
	}
	for typ, url := range map[string]string{"identity": c.KeystoneURL(), "network": c.NeutronURL()} {
		svc, err := services.Create(ctx, identity, services.CreateOpts{Type: typ, Extra: map[string]any{"name": map[string]string{"identity": "keystone", "network": "neutron"}[typ]}}).Extract()
		if err != nil {
			return fmt.Errorf("openstack: create service %s: %w", typ, err)
		}
		for _, iface := range []gophercloud.Availability{gophercloud.AvailabilityPublic, gophercloud.AvailabilityInternal, gophercloud.AvailabilityAdmin} {
			if _, err := endpoints.Create(ctx, identity, endpoints.CreateOpts{Availability: iface, Region: Region, URL: url, ServiceID: svc.ID}).Extract(); err != nil {
				return fmt.Errorf("openstack: create %s endpoint of %s: %w", iface, typ, err)
			}
		}
	}
	// A token's catalog is the one of its issue (and gophercloud keeps the first one across
	// re-authentications): the admin authenticates again to see the network endpoint.
	if c.admin, err = c.authenticate(ctx, adminAuth); err != nil {
		return fmt.Errorf("openstack: authenticate as the cloud admin: %w", err)
	}
	return nil
}

// authenticate returns a provider client authenticated with o against the fixture's Keystone,
// trusting the private CA, re-authenticating when its token expires.
func (c *Cloud) authenticate(ctx context.Context, o gophercloud.AuthOptions) (*gophercloud.ProviderClient, error) {
	o.IdentityEndpoint, o.AllowReauth = c.KeystoneURL(), true
	p, err := openstack.NewClient(o.IdentityEndpoint)
	if err != nil {
		return nil, err
	}
	p.HTTPClient = *c.ca.httpClient(60 * time.Second)
	if err := openstack.Authenticate(ctx, p, o); err != nil {
		return nil, err
	}
	return p, nil
}

// UserSpec describes a Keystone user to create.
type UserSpec struct {
	Name, Password string
	// Project is where Roles are granted. Empty: ServiceProject.
	Project string
	// Roles are granted on Project (none: the user can authenticate unscoped only), or on the
	// system with SystemScope.
	Roles       []string
	SystemScope bool
}

// User is a Keystone user in the default domain with roles on one project (or on the system).
type User struct {
	ID, Name, Password string
	Project            string // "" with SystemScope
	SystemScope        bool
}

// CreateUser creates a user in the default domain and grants it spec.Roles on spec.Project, the way
// `openstack user create` and `openstack role add --project P --user U ROLE` do.
func (c *Cloud) CreateUser(ctx context.Context, spec UserSpec) (User, error) {
	if spec.Project == "" && !spec.SystemScope {
		spec.Project = ServiceProject
	}
	u, err := users.Create(ctx, c.identity, users.CreateOpts{Name: spec.Name, Password: spec.Password, DomainID: "default"}).Extract()
	if err != nil {
		return User{}, fmt.Errorf("openstack: create user %s: %w", spec.Name, err)
	}
	out := User{ID: u.ID, Name: spec.Name, Password: spec.Password, Project: spec.Project, SystemScope: spec.SystemScope}
	if len(spec.Roles) == 0 {
		return out, nil
	}
	on, target := roles.AssignOpts{UserID: u.ID, System: true}, "the system"
	if !spec.SystemScope {
		projectID, err := c.lookupID(ctx, "project", spec.Project)
		if err != nil {
			return out, err
		}
		on, target = roles.AssignOpts{UserID: u.ID, ProjectID: projectID}, "project "+spec.Project
	}
	for _, r := range spec.Roles {
		roleID, err := c.lookupID(ctx, "role", r)
		if err != nil {
			return out, err
		}
		if err := roles.Assign(ctx, c.identity, roleID, on).ExtractErr(); err != nil {
			return out, fmt.Errorf("openstack: grant %s on %s to %s: %w", r, target, spec.Name, err)
		}
	}
	c.opts.Logf("openstack: keystone user %s with %v on %s", spec.Name, spec.Roles, target)
	return out, nil
}

// CreateProject creates a project in the default domain.
func (c *Cloud) CreateProject(ctx context.Context, name string) (string, error) {
	p, err := projects.Create(ctx, c.identity, projects.CreateOpts{Name: name, DomainID: "default"}).Extract()
	if err != nil {
		return "", fmt.Errorf("openstack: create project %s: %w", name, err)
	}
	return p.ID, nil
}

// lookupID finds a project or role id by name.
func (c *Cloud) lookupID(ctx context.Context, kind, name string) (string, error) {
	var ids []string
	switch kind {
	case "project":
		pages, err := projects.List(c.identity, projects.ListOpts{Name: name}).AllPages(ctx)
		if err != nil {
			return "", fmt.Errorf("openstack: find project %s: %w", name, err)
		}
		ps, err := projects.ExtractProjects(pages)
		if err != nil {
			return "", err
		}
		for _, p := range ps {
			ids = append(ids, p.ID)
		}
	default:
		pages, err := roles.List(c.identity, roles.ListOpts{Name: name}).AllPages(ctx)
		if err != nil {
			return "", fmt.Errorf("openstack: find role %s: %w", name, err)
		}
		rs, err := roles.ExtractRoles(pages)
		if err != nil {
			return "", err
		}
		for _, r := range rs {
			ids = append(ids, r.ID)
		}
	}
	if len(ids) != 1 {
		return "", fmt.Errorf("openstack: %d %ss named %s", len(ids), kind, name)
	}
	return ids[0], nil
}

// AppCredential is a Keystone application credential: an id and a secret that authenticate as
// its user, on its project, with its roles.
type AppCredential struct {
	ID, Name, Secret string
}

// CreateAppCredential creates an application credential for u, on u.Project, restricted to roles
// (empty: all of u's roles there) and expiring at expiresAt (zero: never). As in Keystone, only the
// user itself may do it: the fixture authenticates as u, as `openstack application credential
// create` would.
func (c *Cloud) CreateAppCredential(ctx context.Context, u User, name string, roleNames []string, expiresAt time.Time) (AppCredential, error) {
	p, err := c.authenticate(ctx, gophercloud.AuthOptions{Username: u.Name, Password: u.Password, DomainID: "default",
		Scope: &gophercloud.AuthScope{ProjectName: u.Project, DomainID: "default"}})
	if err != nil {
		return AppCredential{}, fmt.Errorf("openstack: authenticate as %s: %w", u.Name, err)
	}
	identity, err := openstack.NewIdentityV3(p, gophercloud.EndpointOpts{})
	if err != nil {
		return AppCredential{}, err
	}
	opts := applicationcredentials.CreateOpts{Name: name}
	for _, r := range roleNames {
		opts.Roles = append(opts.Roles, applicationcredentials.Role{Name: r})
	}
	if !expiresAt.IsZero() {
		opts.ExpiresAt = &expiresAt
	}
	ac, err := applicationcredentials.Create(ctx, identity, u.ID, opts).Extract()
	if err != nil {
		return AppCredential{}, fmt.Errorf("openstack: create application credential %s of %s: %w", name, u.Name, err)
	}
	return AppCredential{ID: ac.ID, Name: name, Secret: ac.Secret}, nil
}

// KeystoneRequest is one request Keystone served, from its uwsgi request log.
type KeystoneRequest struct {
	Method, URI string
	Status      int
	UserAgent   string
}

var keystoneLogLine = regexp.MustCompile(`^\S+ ([A-Z]+) (\S+) (\d{3}) \d+ms "(.*)"$`)

// KeystoneRequests returns every request Keystone served so far (across restarts), in order.
func (c *Cloud) KeystoneRequests() ([]KeystoneRequest, error) {
	f, err := os.Open(c.path("log/keystone-uwsgi.log"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []KeystoneRequest
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		m := keystoneLogLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		status, _ := strconv.Atoi(m[3])
		out = append(out, KeystoneRequest{Method: m[1], URI: m[2], Status: status, UserAgent: m[4]})
	}
	return out, sc.Err()
}

// PasswordCloud is u's clouds.yaml entry: password authentication scoped to u.Project (or the
// system), Keystone and Neutron trusted through the private CA.
func (c *Cloud) PasswordCloud(u User) clouds.Cloud {
	auth := &clouds.AuthInfo{AuthURL: c.KeystoneURL(), Username: u.Name, Password: u.Password, UserDomainName: "Default"}
	if u.SystemScope {
		auth.SystemScope = "all"
	} else {
		auth.ProjectName, auth.ProjectDomainName = u.Project, "Default"
	}
	return clouds.Cloud{AuthType: clouds.AuthV3Password, RegionName: Region, CACertFile: c.CACert(), IdentityAPIVersion: "3", AuthInfo: auth}
}

// AppCredCloud is the clouds.yaml entry that authenticates with a (its project and roles are the
// credential's own).
func (c *Cloud) AppCredCloud(a AppCredential) clouds.Cloud {
	return clouds.Cloud{
		AuthType: clouds.AuthV3ApplicationCredential, RegionName: Region, CACertFile: c.CACert(), IdentityAPIVersion: "3",
		AuthInfo: &clouds.AuthInfo{AuthURL: c.KeystoneURL(), ApplicationCredentialID: a.ID, ApplicationCredentialSecret: a.Secret},
	}
}

// WriteCloudsYAML writes entries as a clouds.yaml at path, mode 0600 (it holds secrets).
func WriteCloudsYAML(path string, entries map[string]clouds.Cloud) error {
	b, err := yaml.Marshal(clouds.Clouds{Clouds: entries})
	if err != nil {
		return fmt.Errorf("openstack: clouds.yaml: %w", err)
	}
	return os.WriteFile(path, b, 0o600)
}

// ChangePassword sets u's password as the cloud admin would (`openstack user set --password`).
// Keystone then refuses the old one; tokens already issued stay valid where they are cached.
func (c *Cloud) ChangePassword(ctx context.Context, u User, password string) error {
	if _, err := users.Update(ctx, c.identity, u.ID, users.UpdateOpts{Password: password}).Extract(); err != nil {
		return fmt.Errorf("openstack: change the password of %s: %w", u.Name, err)
	}
	return nil
}
