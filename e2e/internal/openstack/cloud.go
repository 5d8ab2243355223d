//go:build e2e

package openstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"

	"github.com/metaproxy/metaproxy/pkg/osclient"
)

// Python is the interpreter for every piece of OpenStack Python: the Debian libraries live in
// /usr/lib/python3/dist-packages, which a python3 found first on PATH (pyenv, venv) may not see.
const Python = "/usr/bin/python3"

// DefaultProjectID is the project (tenant) that owns networks and VMs unless told otherwise.
const DefaultProjectID = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"

// DHCPDomain is nova's [api] dhcp_domain here: nova serves "<hostname>.<DHCPDomain>" as hostname.
const DHCPDomain = "novalocal"

// Options configures Start.
type Options struct {
	// BaseDir holds every config, database, socket and log. Empty: a new directory under
	// os.TempDir() that Close removes (a given BaseDir is left in place, logs included).
	BaseDir string
	// SharedSecret is metadata_proxy_shared_secret, shared by nova and the metadata agent. Required.
	SharedSecret string
	// ProjectID owns the networks CreateNetwork makes and is the default VM project.
	// Empty: DefaultProjectID.
	ProjectID string
	// WithAgent also starts RabbitMQ and the incumbent neutron-metadata-agent (UNIX socket at
	// AgentSocket, port cache on), and gives neutron-server a real RPC transport.
	WithAgent bool
	// NovaCacheExpiration is nova's [api] metadata_cache_expiration, rounded to seconds. Zero
	// disables nova's cache, so that every request is judged and built afresh (password POST then
	// GET, instances deleted mid-test). Nova's own default is 15s.
	NovaCacheExpiration time.Duration
	// DBCacheDir caches the schema-only databases per package version (see DefaultDBCacheDir).
	// Empty: DefaultDBCacheDir; "-": no cache, always create the schemas.
	DBCacheDir string
	// StopGrace bounds how long a process may take to exit after SIGTERM before it gets SIGKILL.
	// Zero: 15s (neutron-server may take ~13s).
	StopGrace time.Duration
	// Auth is how neutron-server authenticates requests: AuthNoauth (the default) or AuthKeystone
	// (Keystone, keystonemiddleware, TLS with the private CA).
	Auth Auth
	// TokenExpiration is Keystone's [token] expiration, rounded to seconds (AuthKeystone). Zero:
	// Keystone's default, an hour.
	TokenExpiration time.Duration
	// Logf receives progress lines (e.g. t.Logf). Nil: silent.
	Logf func(format string, args ...any)
	// OVN, when set, runs neutron-server with ML2/OVN against these OVN databases instead of the
	// agentless ML2 (see ovn.go). Exclusive with WithAgent (the ML2/OVS incumbent).
	OVN *OVN
}

// Cloud is a running neutron-server and nova metadata API (and optionally RabbitMQ with
// neutron-metadata-agent). Its methods are safe for concurrent use.
type Cloud struct {
	opts     Options
	base     string
	ownsBase bool
	started  time.Time

	neutronPort  int
	novaPort     int
	keystonePort int
	rabbitPorts  [3]int // AMQP, Erlang distribution, epmd

	network *gophercloud.ServiceClient
	objects *novaObjects

	// AuthKeystone only: the private CA, the cloud admin's provider and identity client, and a
	// channel closed once keystoneSetup is done (neutron's warm-up needs the admin's token).
	ca            *privateCA
	admin         *gophercloud.ProviderClient
	identity      *gophercloud.ServiceClient
	keystoneReady chan struct{}

	mu       sync.Mutex
	keystone *process
	neutron  *process
	nova     *process
	epmd     *process
	rabbit   *process
	agent    *process
	closed   bool
}

// KeystoneAvailable reports why AuthKeystone cannot run here (Keystone or uwsgi missing), or nil.
func KeystoneAvailable() error {
	var errs []error
	for _, b := range []string{"/usr/bin/keystone-manage", "/usr/bin/keystone-wsgi-public", "/usr/bin/uwsgi",
		"/usr/lib/uwsgi/plugins/python3_plugin.so"} {
		if _, err := os.Stat(b); err != nil {
			errs = append(errs, fmt.Errorf("%s missing (run `make deps` as root)", b))
		}
	}
	return errors.Join(errs...)
}

// Available reports why the fixture cannot run here (not root, a package missing), or nil.
// Tests skip on its error; `make deps` (e2e/scripts/install-deps.sh) installs the packages.
func Available(withAgent bool) error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("not root (network namespaces and neutron need it)"))
	}
	bins := []string{Python, "/usr/bin/neutron-server", "/usr/bin/nova-api", "/usr/bin/nova-manage",
		"/usr/bin/openssl", "/usr/bin/curl", "/usr/sbin/ip"}
	if withAgent {
		bins = append(bins, "/usr/bin/neutron-metadata-agent", "/usr/lib/rabbitmq/bin/rabbitmq-server",
			"/usr/lib/rabbitmq/bin/rabbitmqctl", "/usr/bin/epmd")
	}
	for _, b := range bins {
		if _, err := os.Stat(b); err != nil {
			errs = append(errs, fmt.Errorf("%s missing (run `make deps` as root)", b))
		}
	}
	return errors.Join(errs...)
}

// Start brings up neutron-server and the nova metadata API (and, with WithAgent, RabbitMQ and
// neutron-metadata-agent) and returns once all answer. On error everything started is stopped.
func Start(ctx context.Context, o Options) (c *Cloud, err error) {
	if o.SharedSecret == "" {
		return nil, errors.New("openstack: Options.SharedSecret is required")
	}
	if err := Available(o.WithAgent); err != nil {
		return nil, fmt.Errorf("openstack: cannot run here: %w", err)
	}
	if o.OVN != nil && o.WithAgent {
		return nil, errors.New("openstack: Options.OVN and WithAgent (ML2/OVS's agent) are exclusive")
	}
	switch o.Auth {
	case "":
		o.Auth = AuthNoauth
	case AuthNoauth:
	case AuthKeystone:
		if err := KeystoneAvailable(); err != nil {
			return nil, fmt.Errorf("openstack: cannot run Keystone here: %w", err)
		}
		if o.TokenExpiration == 0 {
			o.TokenExpiration = time.Hour
		}
	default:
		return nil, fmt.Errorf("openstack: Options.Auth %q: want %q or %q", o.Auth, AuthNoauth, AuthKeystone)
	}
	if o.ProjectID == "" {
		o.ProjectID = DefaultProjectID
	}
	if o.StopGrace == 0 {
		o.StopGrace = 15 * time.Second
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	c = &Cloud{opts: o, base: o.BaseDir, started: time.Now(), keystoneReady: make(chan struct{})}
	for _, k := range reapStale() {
		o.Logf("openstack: killed leftover %s of an earlier run", k)
	}
	if c.base == "" {
		if c.base, err = os.MkdirTemp("", "metaproxy-openstack-"); err != nil {
			return nil, fmt.Errorf("openstack: base dir: %w", err)
		}
		c.ownsBase = true
	}
	defer func() {
		if err != nil {
			o.Logf("openstack: start failed, logs:\n%s", c.Logs())
			_ = c.Close()
			c = nil
		}
	}()
	for _, d := range []string{"log", "neutron/state", "neutron/lock", "nova/state", "nova/lock",
		"mdagent", "rabbit/mnesia", "rabbit/log", "rabbit/home", "keystone/fernet-keys"} {
		if err := os.MkdirAll(filepath.Join(c.base, d), 0o755); err != nil {
			return c, fmt.Errorf("openstack: %w", err)
		}
	}
	ports, err := freePorts(6)
	if err != nil {
		return c, err
	}
	c.neutronPort, c.novaPort, c.keystonePort = ports[0], ports[1], ports[5]
	copy(c.rabbitPorts[:], ports[2:5])
	if o.Auth == AuthKeystone {
		if c.ca, err = newPrivateCA(c.path("tls")); err != nil {
			return c, err
		}
	}
	if err := c.writeConfigs(); err != nil {
		return c, err
	}
	if o.Auth == AuthNoauth {
		if c.network, err = osclient.NewNetworkClient(ctx, osclient.Options{NeutronURL: c.NeutronURL(), Timeout: 60 * time.Second}); err != nil {
			return c, fmt.Errorf("openstack: neutron client: %w", err)
		}
		close(c.keystoneReady)
	}

	// The slow steps (schemas: python imports, ~4-8s each) run side by side.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	rabbitUp := make(chan error, 1)
	if o.Auth == AuthKeystone {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[3] = c.startKeystoneFirst(ctx)
		}()
	}
	wg.Add(3)
	go func() {
		defer wg.Done()
		if !o.WithAgent {
			rabbitUp <- nil
			return
		}
		err := c.startRabbit(ctx)
		rabbitUp <- err
		errs[2] = err
	}()
	go func() {
		defer wg.Done()
		dbs := dbSet{service: "neutron", pkg: "python3-neutron", files: []string{"neutron.sqlite"}}
		cache := c.cacheDir(dbs, string(scriptText("neutron_schema.py")))
		if !c.restoreDBs(dbs, cache) {
			if errs[0] = c.runStep(ctx, "neutron-schema", Python, c.script("neutron_schema.py"),
				c.path("neutron/neutron.conf"), c.path("neutron/neutron.sqlite")); errs[0] != nil {
				return
			}
			c.saveDBs(dbs, cache)
		}
		if err := <-rabbitUp; err != nil {
			errs[0] = errors.New("neutron-server not started: RabbitMQ failed")
			return
		}
		errs[0] = c.StartNeutron(ctx)
	}()
	go func() {
		defer wg.Done()
		conf := c.path("nova/nova.conf")
		dbs := dbSet{service: "nova", pkg: "python3-nova", files: []string{"nova_api.sqlite", "nova.sqlite"}}
		cache := c.cacheDir(dbs, "api_db sync; db sync; WAL")
		if !c.restoreDBs(dbs, cache) {
			for _, step := range []string{"api_db", "db"} {
				if errs[1] = c.runStep(ctx, "nova-"+step+"-sync", "/usr/bin/nova-manage", "--config-file", conf, step, "sync"); errs[1] != nil {
					return
				}
			}
			// WAL (persistent in the file): readers do not block nova-api's or the helper's writes.
			if errs[1] = c.runStep(ctx, "nova-wal", Python, "-c",
				"import sqlite3,sys\nfor p in sys.argv[1:]: sqlite3.connect(p).execute('PRAGMA journal_mode=WAL').fetchall()",
				c.path("nova/nova_api.sqlite"), c.path("nova/nova.sqlite")); errs[1] != nil {
				return
			}
			c.saveDBs(dbs, cache)
		}
		objs := make(chan error, 1)
		go func() {
			var err error
			c.objects, err = startNovaObjects(c.script("nova_objects.py"), conf, c.path("log/nova-objects.log"))
			objs <- err
		}()
		errs[1] = errors.Join(c.StartNova(ctx), <-objs)
	}()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	if o.WithAgent {
		if err := c.startAgent(ctx); err != nil {
			return c, err
		}
	}
	o.Logf("openstack: neutron %s (%s), nova metadata %s up in %s (base %s)", c.NeutronURL(), o.Auth, c.NovaURL(),
		time.Since(c.started).Round(100*time.Millisecond), c.base)
	return c, nil
}

// startKeystoneFirst prepares Keystone's database and keys, starts it, and sets it up as a
// deployment would (keystoneSetup); neutron's warm-up waits for it (keystoneReady).
func (c *Cloud) startKeystoneFirst(ctx context.Context) error {
	defer close(c.keystoneReady) // also on failure: warmNeutron then sees no client and gives up
	if err := c.keystonePrep(ctx); err != nil {
		return err
	}
	if err := c.StartKeystone(ctx); err != nil {
		return err
	}
	if err := c.keystoneSetup(ctx); err != nil {
		return err
	}
	network, err := openstack.NewNetworkV2(c.admin, gophercloud.EndpointOpts{Region: Region})
	if err != nil {
		return fmt.Errorf("openstack: neutron client: %w", err)
	}
	c.network = network
	return nil
}

// warmNeutron waits for keystoneSetup, then lists networks as the cloud admin until neutron-server
// answers (bounded to 2 minutes).
func (c *Cloud) warmNeutron(ctx context.Context) error {
	select {
	case <-c.keystoneReady:
	case <-ctx.Done():
		return ctx.Err()
	}
	if c.network == nil {
		return errors.New("openstack: neutron-server not warmed up: Keystone failed")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		_, err := c.network.Get(ctx, c.network.ServiceURL("networks")+"?limit=1", nil, nil)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("openstack: neutron-server does not list networks for the admin: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Auth is how neutron-server authenticates requests.
func (c *Cloud) Auth() Auth { return c.opts.Auth }

// NeutronURL is the Neutron endpoint, like http://127.0.0.1:PORT/ (noauth: no token needed) or,
// with AuthKeystone, https://127.0.0.1:PORT/ (a token needed; the catalog's network endpoint).
func (c *Cloud) NeutronURL() string {
	if c.opts.Auth == AuthKeystone {
		return fmt.Sprintf("https://127.0.0.1:%d/", c.neutronPort)
	}
	return fmt.Sprintf("http://127.0.0.1:%d/", c.neutronPort)
}

// NovaURL is nova's metadata API, like http://127.0.0.1:PORT (no trailing slash).
func (c *Cloud) NovaURL() string { return fmt.Sprintf("http://127.0.0.1:%d", c.novaPort) }

// NovaHostPort is nova's metadata API address (nova_metadata_host, nova_metadata_port).
func (c *Cloud) NovaHostPort() (string, int) { return "127.0.0.1", c.novaPort }

// ProjectID is the default project of networks and VMs.
func (c *Cloud) ProjectID() string { return c.opts.ProjectID }

// BaseDir is the directory that holds configs, databases, sockets and logs.
func (c *Cloud) BaseDir() string { return c.base }

// MetadataAgentINI is a metadata_agent.ini as an operator has it (nova host, port, protocol, the
// shared secret, the agent's socket and cache settings). It exists with or without WithAgent, so
// that metaproxy can be pointed at it.
func (c *Cloud) MetadataAgentINI() string { return c.path("mdagent/metadata_agent.ini") }

// AgentSocket is the UNIX socket neutron-metadata-agent listens on (WithAgent only): haproxy's
// upstream in the incumbent's setup.
func (c *Cloud) AgentSocket() string { return c.path("mdagent/metadata_proxy") }

// NetworkClient is a gophercloud (v2) Neutron client with an admin context: noauth, or with
// AuthKeystone the cloud admin's.
func (c *Cloud) NetworkClient() *gophercloud.ServiceClient { return c.network }

// StartNeutron starts neutron-server (after StopNeutron) and waits until it answers. With
// WithAgent it also restarts neutron-metadata-agent, whose first state report warms the new RPC
// worker.
func (c *Cloud) StartNeutron(ctx context.Context) error {
	c.mu.Lock()
	if c.closed || c.neutron != nil {
		c.mu.Unlock()
		return errors.New("openstack: neutron-server already running or cloud closed")
	}
	p, err := startProcess("neutron-server", c.path("log/neutron-server.out"), nil,
		"/usr/bin/neutron-server", "--config-file", c.path("neutron/neutron.conf"),
		"--log-file", c.path("log/neutron-server.log"))
	c.neutron = p
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("openstack: %w", err)
	}
	// GET /v2.0/networks also warms SQLAlchemy's mappers: a cold worker answers GET /v2.0/ports
	// with 500 (Port has no attribute port_forwardings) until another query ran. With Keystone it
	// needs a token: the version document (no token) first, then the admin's GET.
	if c.opts.Auth == AuthKeystone {
		if err := c.waitHTTP(ctx, p, c.NeutronURL()); err != nil {
			return err
		}
		if err := c.warmNeutron(ctx); err != nil {
			return err
		}
	} else if err := c.waitHTTP(ctx, p, c.NeutronURL()+"v2.0/networks"); err != nil {
		return err
	}
	// The RPC worker has the same cold start; the metadata agent's state report warms it, and the
	// agent reports only when it starts (see metadata_agent.ini), so a running agent is restarted.
	c.mu.Lock()
	agent := c.agent
	c.agent = nil
	c.mu.Unlock()
	if agent == nil {
		return nil
	}
	agent.stop(c.opts.StopGrace)
	return c.startAgent(ctx)
}

// StopNeutron stops neutron-server (SIGTERM, then SIGKILL after StopGrace).
func (c *Cloud) StopNeutron() { c.stopSlot(&c.neutron) }

// stopSlot stops the process in *slot, if any, and empties the slot (c.mu guards it).
func (c *Cloud) stopSlot(slot **process) {
	c.mu.Lock()
	p := *slot
	*slot = nil
	c.mu.Unlock()
	if p != nil {
		p.stop(c.opts.StopGrace)
	}
}

// StartNova starts nova's metadata API (after StopNova) and waits until it answers.
func (c *Cloud) StartNova(ctx context.Context) error {
	c.mu.Lock()
	if c.closed || c.nova != nil {
		c.mu.Unlock()
		return errors.New("openstack: nova-api already running or cloud closed")
	}
	p, err := startProcess("nova-api", c.path("log/nova-api.out"), nil,
		"/usr/bin/nova-api", "--config-file", c.path("nova/nova.conf"),
		"--log-file", c.path("log/nova-api.log"))
	c.nova = p
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("openstack: %w", err)
	}
	return c.waitHTTP(ctx, p, c.NovaURL()+"/")
}

// StopNova stops nova's metadata API (SIGTERM, then SIGKILL after StopGrace).
func (c *Cloud) StopNova() { c.stopSlot(&c.nova) }

// SetNovaCacheExpiration changes nova's [api] metadata_cache_expiration and restarts the nova
// metadata API if it runs. Nova builds metadata with Neutron calls (security groups), so with the
// cache off it answers 500 while neutron-server is down; with it on, an instance read within the
// window is served from nova's cache, but a password POST is not visible to GET (and a second POST
// gets no 409) until the entry expires.
func (c *Cloud) SetNovaCacheExpiration(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.opts.NovaCacheExpiration = d
	running := c.nova != nil
	err := c.writeConfigs()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if !running {
		return nil
	}
	c.StopNova()
	return c.StartNova(ctx)
}

// Close stops every process the cloud started (SIGTERM to each process group, SIGKILL after
// StopGrace) and removes BaseDir if Start created it. It is safe to call more than once.
func (c *Cloud) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	procs := []*process{c.agent, c.nova, c.neutron, c.keystone, c.rabbit, c.epmd}
	c.agent, c.nova, c.neutron, c.keystone, c.rabbit, c.epmd = nil, nil, nil, nil, nil, nil
	objs := c.objects
	c.mu.Unlock()

	if objs != nil {
		objs.close()
	}
	var wg sync.WaitGroup
	for _, p := range procs[:4] { // independent of each other: stop them side by side
		if p != nil {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop(c.opts.StopGrace) }()
		}
	}
	wg.Wait()
	for _, p := range procs[4:] { // RabbitMQ before its epmd
		if p != nil {
			p.stop(c.opts.StopGrace)
		}
	}
	if c.ownsBase {
		return os.RemoveAll(c.base)
	}
	return nil
}

// Logs returns the last lines of every log under BaseDir/log, for a failing test to print.
func (c *Cloud) Logs() string {
	const lines = 40
	files, _ := filepath.Glob(filepath.Join(c.base, "log", "*"))
	sort.Strings(files)
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil || len(data) == 0 {
			continue
		}
		all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(all) > lines {
			all = all[len(all)-lines:]
		}
		fmt.Fprintf(&b, "==> %s (last %d lines) <==\n%s\n", f, len(all), strings.Join(all, "\n"))
	}
	return b.String()
}

func (c *Cloud) path(rel string) string { return filepath.Join(c.base, rel) }

// runStep runs a one-shot command to completion, its output in BaseDir/log/<name>.log.
func (c *Cloud) runStep(ctx context.Context, name string, argv ...string) error {
	t0 := time.Now()
	logf, err := os.OpenFile(c.path("log/"+name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("openstack: %w", err)
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("openstack: %s failed (see %s): %w", name, logf.Name(), err)
	}
	c.opts.Logf("openstack: %s took %s", name, time.Since(t0).Round(100*time.Millisecond))
	return nil
}

// waitHTTP polls url until it answers 200, p exits, or ctx ends (bounded to 2 minutes).
func (c *Cloud) waitHTTP(ctx context.Context, p *process, url string) error {
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	client := &http.Client{Timeout: 5 * time.Second}
	if c.ca != nil {
		client = c.ca.httpClient(5 * time.Second)
	}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				c.opts.Logf("openstack: %s answers after %s", p.name, time.Since(t0).Round(100*time.Millisecond))
				return nil
			}
		}
		if done, err := p.exited(); done {
			return fmt.Errorf("openstack: %s exited before answering %s: %v", p.name, url, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("openstack: %s did not answer %s: %w", p.name, url, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// freePorts reserves n distinct free TCP ports on 127.0.0.1 (released before use: another process
// could take one in between, which on a test machine is rare and fails loudly).
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("openstack: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
