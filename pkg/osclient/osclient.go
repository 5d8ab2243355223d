// Package osclient builds the gophercloud client both services use to talk to Neutron: from a
// clouds.yaml entry (OS_CLOUD), from the OS_* environment, or, for labs and tests that run
// neutron-server with auth_strategy=noauth, straight from a Neutron URL.
package osclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
)

// Options selects how to reach Neutron. At most one of Cloud and NeutronURL may be set; with neither,
// OS_CLOUD (clouds.yaml) or else the OS_* variables (OS_AUTH_URL, OS_USERNAME, ...) are used.
type Options struct {
	// Cloud is the clouds.yaml entry to use (as OS_CLOUD).
	Cloud string
	// NeutronURL is a Neutron endpoint that needs no token (neutron-server with auth_strategy = noauth),
	// e.g. http://127.0.0.1:9696/. Keystone is not contacted.
	NeutronURL string
	// Timeout bounds every HTTP request to Keystone and Neutron (0: no client-wide bound; callers
	// still pass contexts with deadlines).
	Timeout time.Duration
	// WrapTransport, when set, wraps the transport that carries every request (e.g. with otelhttp),
	// after the TLS settings of clouds.yaml were applied to it.
	WrapTransport func(http.RoundTripper) http.RoundTripper
}

// ErrNoCredentials is returned when no way to reach Neutron was configured.
var ErrNoCredentials = errors.New("no Neutron credentials: set --os-cloud (clouds.yaml), OS_CLOUD, the OS_* variables, or --neutron-url for a noauth Neutron")

// NewNetworkClient returns a Neutron (network v2) client. With Keystone it authenticates once and
// re-authenticates when the token expires.
func NewNetworkClient(ctx context.Context, o Options) (*gophercloud.ServiceClient, error) {
	if o.Cloud != "" && o.NeutronURL != "" {
		return nil, errors.New("choose one of a clouds.yaml entry and a noauth Neutron URL, not both")
	}
	httpClient := http.Client{Timeout: o.Timeout, Transport: o.wrap(nil)}
	if o.NeutronURL != "" {
		return noauthClient(o.NeutronURL, httpClient)
	}

	var (
		authOpts gophercloud.AuthOptions
		epOpts   gophercloud.EndpointOpts
		tlsConf  *tls.Config
		err      error
	)
	switch cloud := firstNonEmpty(o.Cloud, os.Getenv("OS_CLOUD")); {
	case cloud != "":
		authOpts, epOpts, tlsConf, err = clouds.Parse(clouds.WithCloudName(cloud))
		if err != nil {
			return nil, fmt.Errorf("read clouds.yaml entry %q: %w", cloud, err)
		}
	case os.Getenv("OS_AUTH_URL") != "":
		authOpts, err = openstack.AuthOptionsFromEnv()
		if err != nil {
			return nil, fmt.Errorf("read OS_* credentials: %w", err)
		}
		epOpts = gophercloud.EndpointOpts{Region: os.Getenv("OS_REGION_NAME")}
	default:
		return nil, ErrNoCredentials
	}
	authOpts.AllowReauth = true

	provider, err := openstack.NewClient(authOpts.IdentityEndpoint)
	if err != nil {
		return nil, fmt.Errorf("keystone endpoint %q: %w", authOpts.IdentityEndpoint, err)
	}
	if tlsConf != nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = tlsConf
		httpClient.Transport = o.wrap(t)
	}
	provider.HTTPClient = httpClient
	if err := openstack.Authenticate(ctx, provider, authOpts); err != nil {
		return nil, fmt.Errorf("authenticate to keystone at %s: %w", authOpts.IdentityEndpoint, err)
	}
	client, err := openstack.NewNetworkV2(provider, epOpts)
	if err != nil {
		return nil, fmt.Errorf("find the network endpoint in the service catalog: %w", err)
	}
	return client, nil
}

// wrap applies WrapTransport to base (nil: Go's default transport).
func (o Options) wrap(base http.RoundTripper) http.RoundTripper {
	if o.WrapTransport == nil {
		return base
	}
	if base == nil {
		base = http.DefaultTransport
	}
	return o.WrapTransport(base)
}

func noauthClient(raw string, httpClient http.Client) (*gophercloud.ServiceClient, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("neutron URL %q: want http(s)://host:port/", raw)
	}
	endpoint := strings.TrimSuffix(u.String(), "/")
	endpoint = strings.TrimSuffix(endpoint, "/v2.0") + "/"
	provider := &gophercloud.ProviderClient{HTTPClient: httpClient}
	provider.UseTokenLock()
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
