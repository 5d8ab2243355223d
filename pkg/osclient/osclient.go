// Package osclient builds the gophercloud client both services use to talk to Neutron: from a
// clouds.yaml entry (OS_CLOUD), from the OS_* environment, or, for labs and tests that run
// neutron-server with auth_strategy=noauth, straight from a Neutron URL. Its errors carry
// pkg/cause's causes, and it says who a token is (Identity: user, project, roles).
//
// A Network authenticates with Keystone when it is first used, not when it is built, so that a
// service can start, and say why it is not ready, while Keystone is down or refuses its
// credentials; a failed authentication is remembered for a moment, so that a storm of requests is
// not a storm of Keystone calls.
package osclient

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
	"golang.org/x/sync/singleflight"

	"github.com/metaproxy/metaproxy/pkg/cause"
)

// DefaultRetryAuthAfter is how long a failed authentication is returned to every caller without
// asking Keystone again, when Options.RetryAuthAfter is zero.
const DefaultRetryAuthAfter = 2 * time.Second

// DefaultTimeout bounds each request and each authentication when Options.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// DefaultMaxIdleConnsPerHost is how many idle connections to each of Neutron and Keystone are
// kept when Options.MaxIdleConnsPerHost is zero (Go's default transport keeps 2).
const DefaultMaxIdleConnsPerHost = 32

// Options selects how to reach Neutron. At most one of Cloud and NeutronURL may be set; with neither,
// OS_CLOUD (clouds.yaml) or else the OS_* variables (OS_AUTH_URL, OS_USERNAME, ...) are used.
type Options struct {
	// Cloud is the clouds.yaml entry to use (as OS_CLOUD).
	Cloud string
	// NeutronURL is a Neutron endpoint that needs no token (neutron-server with auth_strategy = noauth),
	// e.g. http://127.0.0.1:9696/. Keystone is not contacted.
	NeutronURL string
	// Timeout bounds every HTTP request to Keystone and Neutron, and one authentication (callers
	// may pass shorter deadlines). Zero: DefaultTimeout.
	Timeout time.Duration
	// MaxIdleConnsPerHost is how many idle connections to Neutron (and to Keystone) are kept for
	// reuse: match it to the number of concurrent Neutron calls, so that a burst of lookups reuses
	// connections instead of opening (and TLS-handshaking) new ones. Zero: DefaultMaxIdleConnsPerHost.
	MaxIdleConnsPerHost int
	// UserAgent is put before gophercloud's User-Agent, e.g. "metaproxy-extproc/1.2.0", so that
	// Keystone's and Neutron's logs say which service made a request.
	UserAgent string
	// RetryAuthAfter is how long a failed authentication (the first one or a re-authentication
	// after the token expired) is returned without asking Keystone again. Zero: DefaultRetryAuthAfter.
	RetryAuthAfter time.Duration
	// WrapTransport, when set, wraps the transport that carries every request (e.g. with otelhttp),
	// after the TLS settings of clouds.yaml were applied to it.
	WrapTransport func(http.RoundTripper) http.RoundTripper
	// Now is the clock; tests replace it.
	Now func() time.Time
}

// ErrNoCredentials is returned when no way to reach Neutron was configured.
var ErrNoCredentials = errors.New("no Neutron credentials: set --os-cloud (clouds.yaml), OS_CLOUD, the OS_* variables, or --neutron-url for a noauth Neutron")

// Network hands out a Neutron (network v2) client, authenticating with Keystone on first use.
// gophercloud re-authenticates when Neutron refuses an expired token, once for all concurrent
// callers (ProviderClient.Reauthenticate with the token lock that openstack.NewClient sets up).
// It is safe for concurrent use.
type Network struct {
	opts     Options
	source   string // where the credentials come from, for messages
	authOpts gophercloud.AuthOptions
	epOpts   gophercloud.EndpointOpts
	http     http.Client

	group singleflight.Group

	mu       sync.Mutex
	client   *gophercloud.ServiceClient // nil until authenticated
	provider *gophercloud.ProviderClient
	failed   error     // the last failed authentication, returned until retryAt
	retryAt  time.Time // zero unless failed
}

// New reads the configuration (clouds.yaml, OS_*, or the noauth URL) without contacting anything:
// its errors are configuration errors. Keystone is asked on the first Client call.
func New(o Options) (*Network, error) {
	if o.Cloud != "" && o.NeutronURL != "" {
		return nil, errors.New("choose one of a clouds.yaml entry and a noauth Neutron URL, not both")
	}
	if o.RetryAuthAfter <= 0 {
		o.RetryAuthAfter = DefaultRetryAuthAfter
	}
	if o.MaxIdleConnsPerHost <= 0 {
		o.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerHost
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	n := &Network{opts: o}
	if o.NeutronURL != "" {
		n.http = http.Client{Timeout: o.Timeout, Transport: o.wrap(n.transport(nil))}
		c, err := n.noauthClient(o.NeutronURL)
		if err != nil {
			return nil, err
		}
		n.client, n.source = c, "noauth Neutron at "+c.Endpoint
		return n, nil
	}
	var (
		tlsConf *tls.Config
		err     error
	)
	switch cloud := firstNonEmpty(o.Cloud, os.Getenv("OS_CLOUD")); {
	case cloud != "":
		n.authOpts, n.epOpts, tlsConf, err = clouds.Parse(clouds.WithCloudName(cloud))
		if err != nil {
			return nil, fmt.Errorf("read clouds.yaml entry %q: %w", cloud, err)
		}
		n.source = fmt.Sprintf("clouds.yaml entry %q", cloud)
	case os.Getenv("OS_AUTH_URL") != "":
		n.authOpts, err = openstack.AuthOptionsFromEnv()
		if err != nil {
			return nil, fmt.Errorf("read OS_* credentials: %w", err)
		}
		n.epOpts = gophercloud.EndpointOpts{Region: os.Getenv("OS_REGION_NAME")}
		n.source = "the OS_* variables"
	default:
		return nil, ErrNoCredentials
	}
	if n.authOpts.IdentityEndpoint == "" {
		return nil, fmt.Errorf("%s has no auth_url (OS_AUTH_URL): where is Keystone?", n.source)
	}
	n.authOpts.AllowReauth = true
	n.http = http.Client{Timeout: o.Timeout, Transport: o.wrap(n.transport(tlsConf))}
	return n, nil
}

// NewNetworkClient returns an authenticated Neutron (network v2) client at once: New, then Client.
func NewNetworkClient(ctx context.Context, o Options) (*gophercloud.ServiceClient, error) {
	n, err := New(o)
	if err != nil {
		return nil, err
	}
	return n.Client(ctx)
}

// Source says where the credentials come from ("clouds.yaml entry \"x\"", "the OS_* variables",
// "noauth Neutron at URL"), for log lines. Never a secret.
func (n *Network) Source() string { return n.source }

// Client returns the Neutron client, authenticating with Keystone first when that has not
// succeeded yet (one attempt at a time for all callers). A failed attempt is returned to every
// caller for Options.RetryAuthAfter without asking again. Errors are *cause.Error (Credentials,
// KeystoneUnreachable, TLS, or, for a catalog without a network endpoint, BadResponse).
func (n *Network) Client(ctx context.Context) (*gophercloud.ServiceClient, error) {
	n.mu.Lock()
	c, failed, retryAt := n.client, n.failed, n.retryAt
	n.mu.Unlock()
	if c != nil {
		return c, nil
	}
	if failed != nil && n.opts.Now().Before(retryAt) {
		return nil, failed
	}
	ch := n.group.DoChan("auth", func() (any, error) {
		// Detached from the first caller's cancellation (authenticate bounds it): one impatient
		// caller does not fail the others.
		c, err := n.authenticate(context.WithoutCancel(ctx))
		n.mu.Lock()
		defer n.mu.Unlock()
		if err != nil {
			n.failed, n.retryAt = err, n.opts.Now().Add(n.opts.RetryAuthAfter)
			return nil, err
		}
		n.client, n.failed = c, nil
		return c, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*gophercloud.ServiceClient), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// authenticate gets a first token and the catalog's network endpoint.
func (n *Network) authenticate(ctx context.Context) (*gophercloud.ServiceClient, error) {
	ctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	provider, err := openstack.NewClient(n.authOpts.IdentityEndpoint)
	if err != nil {
		return nil, &cause.Error{Cause: cause.Credentials, Err: fmt.Errorf("keystone endpoint %q of %s: %w", n.authOpts.IdentityEndpoint, n.source, err)}
	}
	provider.HTTPClient = n.http
	if n.opts.UserAgent != "" {
		provider.UserAgent.Prepend(n.opts.UserAgent)
	}
	if err := openstack.Authenticate(ctx, provider, n.authOpts); err != nil {
		return nil, cause.Keystone(fmt.Sprintf("authenticate with Keystone at %s (%s)", n.authOpts.IdentityEndpoint, n.source), err)
	}
	reauth := provider.ReauthFunc
	var (
		mu      sync.Mutex
		failed  error
		retryAt time.Time
	)
	// gophercloud re-authenticates on every 401 whose token is still the current one: while
	// Keystone is down that would be one Keystone call per lookup. A failure is returned for
	// RetryAuthAfter instead.
	provider.ReauthFunc = func(ctx context.Context) error {
		mu.Lock()
		if failed != nil && n.opts.Now().Before(retryAt) {
			err := failed
			mu.Unlock()
			return err
		}
		mu.Unlock()
		err := reauth(ctx)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed, retryAt = cause.Keystone(fmt.Sprintf("re-authenticate with Keystone at %s (%s; the token expired or was revoked)", n.authOpts.IdentityEndpoint, n.source), err), n.opts.Now().Add(n.opts.RetryAuthAfter)
			return failed
		}
		failed = nil
		return nil
	}
	// gophercloud finds the endpoint in the token's catalog and asks it for its API versions.
	client, err := openstack.NewNetworkV2(provider, n.epOpts)
	var notFound *gophercloud.ErrEndpointNotFound
	switch {
	case errors.As(err, &notFound):
		return nil, &cause.Error{Cause: cause.BadResponse, Err: fmt.Errorf("the service catalog Keystone gave %s has no network endpoint (region %q, interface %q): check region_name and interface in %s",
			n.who(provider), n.epOpts.Region, cmp.Or(string(n.epOpts.Availability), "public"), n.source)}
	case err != nil:
		e := cause.Neutron(err, false)
		return nil, &cause.Error{Cause: e.Cause, Err: fmt.Errorf("ask the catalog's network endpoint for Neutron's API versions: %w", e.Err)}
	}
	n.mu.Lock()
	n.provider = provider
	n.mu.Unlock()
	return client, nil
}

// Identity says who the current token is: nil for a noauth Neutron or before the first successful
// authentication.
func (n *Network) Identity() *Identity {
	n.mu.Lock()
	p := n.provider
	n.mu.Unlock()
	if p == nil {
		return nil
	}
	return identityOf(p.GetAuthResult())
}

// who names the credentials' user for messages.
func (n *Network) who(p *gophercloud.ProviderClient) string {
	if id := identityOf(p.GetAuthResult()); id != nil {
		return id.String()
	}
	return n.source
}

// transport is a clone of Go's default transport with tlsConf (nil: the default roots) and
// MaxIdleConnsPerHost idle connections per host.
func (n *Network) transport(tlsConf *tls.Config) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if tlsConf != nil {
		t.TLSClientConfig = tlsConf
	}
	t.MaxIdleConnsPerHost = n.opts.MaxIdleConnsPerHost
	if t.MaxIdleConns < 2*n.opts.MaxIdleConnsPerHost {
		t.MaxIdleConns = 2 * n.opts.MaxIdleConnsPerHost // Neutron and Keystone
	}
	return t
}

// wrap applies WrapTransport to base.
func (o Options) wrap(base http.RoundTripper) http.RoundTripper {
	if o.WrapTransport == nil {
		return base
	}
	return o.WrapTransport(base)
}

func (n *Network) noauthClient(raw string) (*gophercloud.ServiceClient, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("neutron URL %q: want http(s)://host:port/", raw)
	}
	endpoint := strings.TrimSuffix(u.String(), "/")
	endpoint = strings.TrimSuffix(endpoint, "/v2.0") + "/"
	provider := &gophercloud.ProviderClient{HTTPClient: n.http}
	provider.UseTokenLock()
	if n.opts.UserAgent != "" {
		provider.UserAgent.Prepend(n.opts.UserAgent)
	}
	return &gophercloud.ServiceClient{
		ProviderClient: provider,
		Endpoint:       endpoint,
		ResourceBase:   endpoint + "v2.0/",
		Type:           "network",
	}, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
