// Package cause says why a call to Neutron, or to Keystone on its behalf, failed: one of a fixed
// set of causes (metric label values), read from what gophercloud returns, with a message that says
// what to check. The cache decides from it whether an old answer may stand in (Outage), cmd/extproc
// what to tell the VM and the operator.
package cause

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
)

// Cause is why a call failed. The set is fixed: the values are metric label values
// (docs/observability.md).
type Cause string

const (
	// Unreachable: no connection to Neutron (refused, reset, no route, DNS).
	Unreachable Cause = "unreachable"
	// Timeout: Neutron did not answer in time.
	Timeout Cause = "timeout"
	// ServerError: Neutron answered 5xx or 429 (it is up but failing or shedding load).
	ServerError Cause = "server_error"
	// Credentials: Keystone or Neutron refused the credentials (401): wrong password,
	// unknown user or project, expired or deleted application credential, or a clouds.yaml entry
	// Keystone cannot use.
	Credentials Cause = "credentials"
	// Forbidden: Neutron's policy refused the request (403), or the credentials cannot see
	// what they must (other projects' ports): the user lacks a role.
	Forbidden Cause = "forbidden"
	// KeystoneUnreachable: a token was needed (the first one, or a new one after expiry) and
	// Keystone could not be reached or failed (connection, timeout, 5xx).
	KeystoneUnreachable Cause = "keystone_unreachable"
	// TLS: the certificate of Neutron or Keystone is not trusted (clouds.yaml cacert).
	TLS Cause = "tls"
	// BadResponse: an answer that cannot be used (another 4xx, a body that is not Neutron's,
	// a catalog without a network endpoint).
	BadResponse Cause = "bad_response"
	// Saturated: the cap on concurrent Neutron calls was reached and no call slot freed up
	// in time (Neutron is slow; see --neutron-max-concurrent). Set by the caller that holds the cap.
	Saturated Cause = "saturated"
)

// All lists every Cause, in a fixed order.
func All() []Cause {
	return []Cause{Unreachable, Timeout, ServerError, Credentials, Forbidden,
		KeystoneUnreachable, TLS, BadResponse, Saturated}
}

// Outage reports whether c means the OpenStack API is down or overloaded (unreachable, timeout,
// server error, Keystone unreachable, saturated): an old answer may then stand in for a fresh one
// for a bounded time. Any other cause means the API is up and says no, or says something unusable,
// so nothing old may be trusted in its place (Neutron may meanwhile give an address to a new VM).
func (c Cause) Outage() bool {
	switch c {
	case Unreachable, Timeout, ServerError, KeystoneUnreachable, Saturated:
		return true
	}
	return false
}

// Error is a failed call with its cause. Err says what happened and what to check.
type Error struct {
	Cause Cause
	Err   error
}

func (e *Error) Error() string { return e.Err.Error() }

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// Of returns the cause recorded in err's chain, if any.
func Of(err error) (Cause, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Cause, true
	}
	return "", false
}

// Neutron turns the error of a gophercloud call to Neutron into an *Error that names the cause and
// says what to check. An *Error already in the chain (a failed authentication) is returned as it
// is. timedOut says whether the caller's own deadline for the call passed.
func Neutron(err error, timedOut bool) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var reauth *gophercloud.ErrUnableToReauthenticate
	if errors.As(err, &reauth) { // does not unwrap: the re-authentication's own error is inside
		if errors.As(reauth.ErrReauth, &e) {
			return e
		}
		return Keystone("re-authenticate", reauth.ErrReauth)
	}
	if code, ok := responseCode(err); ok {
		detail := neutronMessage(code.Body)
		var after *gophercloud.ErrErrorAfterReauthentication
		fresh := errors.As(err, &after)
		switch {
		case code.Actual == http.StatusUnauthorized && fresh:
			return &Error{Cause: Credentials, Err: fmt.Errorf("Neutron refused a token Keystone had just issued (HTTP 401%s): check neutron-server's [keystone_authtoken] and that the user is enabled", detail)}
		case code.Actual == http.StatusUnauthorized:
			return &Error{Cause: Credentials, Err: fmt.Errorf("Neutron refused the credentials (HTTP 401%s): a noauth --neutron-url to a Neutron that wants tokens? Use a clouds.yaml entry", detail)}
		case code.Actual == http.StatusForbidden:
			return &Error{Cause: Forbidden, Err: fmt.Errorf("refused by Neutron's policy (HTTP 403%s): the user lacks a role (docs/migrate-from-neutron-metadata-agent.md, credentials)", detail)}
		case code.Actual == http.StatusServiceUnavailable && bytes.Contains(bytes.ToLower(code.Body), []byte("keystone")):
			// keystonemiddleware could not reach Keystone to validate the token (an expired one,
			// or one it has not seen): "The Keystone service is temporarily unavailable."
			return &Error{Cause: KeystoneUnreachable, Err: fmt.Errorf("Neutron cannot reach Keystone to validate the token (HTTP 503%s)", detail)}
		case code.Actual == http.StatusTooManyRequests || code.Actual >= 500:
			return &Error{Cause: ServerError, Err: fmt.Errorf("Neutron answered HTTP %d%s", code.Actual, detail)}
		default:
			return &Error{Cause: BadResponse, Err: fmt.Errorf("Neutron answered HTTP %d%s to %s %s", code.Actual, detail, code.Method, withoutQuery(code.URL))}
		}
	}
	if c, ok := transportCause(err); ok {
		return &Error{Cause: c, Err: transportError("Neutron", c, err)}
	}
	if timedOut || errors.Is(err, context.DeadlineExceeded) {
		return &Error{Cause: Timeout, Err: fmt.Errorf("Neutron did not answer in time: %w", err)}
	}
	return &Error{Cause: BadResponse, Err: fmt.Errorf("an answer of Neutron that cannot be used: %w", err)}
}

// Keystone classifies a failed authentication with Keystone. op is what was attempted.
func Keystone(op string, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if code, ok := responseCode(err); ok {
		switch {
		case code.Actual >= 500:
			return &Error{Cause: KeystoneUnreachable, Err: fmt.Errorf("%s: Keystone answered HTTP %d%s", op, code.Actual, keystoneMessage(code.Body))}
		case code.Actual == http.StatusNotFound:
			return &Error{Cause: Credentials, Err: fmt.Errorf("%s: Keystone answered HTTP 404 at %s: is auth_url the identity v3 endpoint (https://keystone:5000/v3)?", op, withoutQuery(code.URL))}
		default:
			return &Error{Cause: Credentials, Err: fmt.Errorf("%s: Keystone refused the credentials (HTTP %d%s): check the password or application credential (not expired, not deleted), the user, project and domain names", op, code.Actual, keystoneMessage(code.Body))}
		}
	}
	if c, ok := transportCause(err); ok {
		if c != TLS {
			c = KeystoneUnreachable
		}
		return &Error{Cause: c, Err: fmt.Errorf("%s: %w", op, transportError("Keystone", c, err))}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Cause: KeystoneUnreachable, Err: fmt.Errorf("%s: Keystone did not answer in time: %w", op, err)}
	}
	// gophercloud's own checks of the options (no password, a scope with an application
	// credential, ...): the configuration.
	return &Error{Cause: Credentials, Err: fmt.Errorf("%s: %w", op, err)}
}

// transportCause recognises errors of the connection itself.
func transportCause(err error) (Cause, bool) {
	var (
		unknownCA *x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		record    tls.RecordHeaderError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify) || errors.As(err, &record) {
		return TLS, true
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return Timeout, true
	}
	var (
		opErr  *net.OpError
		dnsErr *net.DNSError
		urlErr *url.Error
	)
	if errors.As(err, &opErr) || errors.As(err, &dnsErr) {
		return Unreachable, true
	}
	if errors.As(err, &urlErr) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return Unreachable, true // io.EOF, connection reset mid-answer: the peer went away
	}
	return "", false
}

// transportError says what went wrong with the connection to who. A *url.Error is replaced by
// its host and the error inside: the full URL holds the query (a VM's address), and the message
// is meant to be the same for every lookup that fails the same way (it is logged once).
func transportError(who string, c Cause, err error) error {
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		if u, perr := url.Parse(urlErr.URL); perr == nil {
			who = fmt.Sprintf("%s (%s://%s)", who, u.Scheme, u.Host)
		}
		err = urlErr.Err
	}
	switch c {
	case TLS:
		return fmt.Errorf("%s's certificate is not trusted (clouds.yaml cacert, or the system's CAs): %w", who, err)
	case Timeout:
		return fmt.Errorf("%s did not answer in time: %w", who, err)
	default:
		return fmt.Errorf("%s is unreachable: %w", who, err)
	}
}

// withoutQuery is raw without its query string.
func withoutQuery(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		u.RawQuery = ""
		return u.String()
	}
	return raw
}

// responseCode finds gophercloud's unexpected-status error in err's chain, as a value or pointer.
func responseCode(err error) (gophercloud.ErrUnexpectedResponseCode, bool) {
	var v gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &v) {
		return v, true
	}
	var p *gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &p) && p != nil {
		return *p, true
	}
	return v, false
}

// neutronMessage extracts the message of a Neutron error body ({"NeutronError": {"message": ...}},
// or a middleware's {"message": ...}, e.g. keystonemiddleware's) as ": <message>", shortened; ""
// when there is none.
func neutronMessage(body []byte) string {
	var e struct {
		NeutronError struct {
			Message string `json:"message"`
		} `json:"NeutronError"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	msg := cmp.Or(e.NeutronError.Message, e.Message)
	// webob's messages hold its HTML template's line breaks.
	msg = strings.Join(strings.Fields(strings.ReplaceAll(msg, "<br />", " ")), " ")
	return shorten(msg)
}

// keystoneMessage extracts the message of a Keystone error body ({"error": {"message": ...}}).
func keystoneMessage(body []byte) string {
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	return shorten(e.Error.Message)
}

func shorten(msg string) string {
	if msg == "" {
		return ""
	}
	const maxLen = 200
	if len(msg) > maxLen {
		msg = msg[:maxLen] + "..."
	}
	return ": " + msg
}
