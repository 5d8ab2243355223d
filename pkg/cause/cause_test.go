package cause

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
)

func TestOutage(t *testing.T) {
	outage := map[Cause]bool{Unreachable: true, Timeout: true, ServerError: true, KeystoneUnreachable: true, Saturated: true}
	for _, c := range All() {
		if c.Outage() != outage[c] {
			t.Errorf("%s.Outage() = %v, want %v", c, c.Outage(), outage[c])
		}
	}
}

func TestOfFindsTheCauseThroughWrapping(t *testing.T) {
	err := fmt.Errorf("resolve 10.0.0.5: %w", &Error{Cause: Forbidden, Err: errors.New("no")})
	if c, ok := Of(err); !ok || c != Forbidden {
		t.Errorf("Of = %q, %v", c, ok)
	}
	if _, ok := Of(errors.New("plain")); ok {
		t.Error("a plain error has a cause")
	}
}

// TestReauthentication: what gophercloud returns around a re-authentication keeps Keystone's
// cause, or says Neutron refused a fresh token.
func TestReauthentication(t *testing.T) {
	neutron401 := gophercloud.ErrUnexpectedResponseCode{Actual: http.StatusUnauthorized, Method: "GET", URL: "https://neutron/v2.0/ports?fixed_ips=ip_address%3D10.0.0.5"}
	keystone401 := gophercloud.ErrUnexpectedResponseCode{Actual: http.StatusUnauthorized, Body: []byte(`{"error":{"message":"The request you have made requires authentication."}}`)}
	keystone503 := gophercloud.ErrUnexpectedResponseCode{Actual: http.StatusServiceUnavailable}
	tests := map[string]struct {
		err  error
		want Cause
		msg  string
	}{
		"reauth refused":                {&gophercloud.ErrUnableToReauthenticate{ErrOriginal: neutron401, ErrReauth: keystone401}, Credentials, "Keystone refused the credentials"},
		"reauth 503":                    {&gophercloud.ErrUnableToReauthenticate{ErrOriginal: neutron401, ErrReauth: keystone503}, KeystoneUnreachable, "Keystone answered HTTP 503"},
		"reauth, then 401 again":        {&gophercloud.ErrErrorAfterReauthentication{ErrOriginal: &neutron401}, Credentials, "token Keystone had just issued"},
		"reauth, then 503":              {&gophercloud.ErrErrorAfterReauthentication{ErrOriginal: &gophercloud.ErrUnexpectedResponseCode{Actual: 503}}, ServerError, "HTTP 503"},
		"an already classified failure": {fmt.Errorf("x: %w", &Error{Cause: TLS, Err: errors.New("untrusted")}), TLS, "untrusted"},
		// keystonemiddleware's answer (webob, Accept: application/json) when Keystone is down and
		// the token is not in its cache.
		"Neutron cannot reach Keystone": {gophercloud.ErrUnexpectedResponseCode{Actual: 503, Body: []byte(
			`{"message": "The server is currently unavailable. Please try again at a later time.<br /><br />\nThe Keystone service is temporarily unavailable.\n\n", "code": "503 Service Unavailable", "title": "Service Unavailable"}`)},
			KeystoneUnreachable, "Please try again at a later time. The Keystone service is temporarily unavailable."},
	}
	for name, tc := range tests {
		got := Neutron(tc.err, false)
		if got.Cause != tc.want || !strings.Contains(got.Error(), tc.msg) {
			t.Errorf("%s: %q %v, want %q saying %q", name, got.Cause, got, tc.want, tc.msg)
		}
		if strings.Contains(got.Error(), "10.0.0.5") {
			t.Errorf("%s: %v names the VM's address (the message must be the same for every VM)", name, got)
		}
	}
}
