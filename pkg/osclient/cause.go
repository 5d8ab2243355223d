package osclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"

	"github.com/gophercloud/gophercloud/v2"
)

// Cause is why a call to Neutron, or to Keystone on its behalf, failed. The set is fixed: the
// values are metric label values (docs/observability.md).
type Cause string

const (
	// CauseUnreachable: no connection to Neutron (refused, reset, no route, DNS).
	CauseUnreachable Cause = "unreachable"
	// CauseTimeout: Neutron did not answer in time.
	CauseTimeout Cause = "timeout"
	// CauseServerError: Neutron answered 5xx or 429 (it is up but failing or shedding load).
	CauseServerError Cause = "server_error"
	// CauseCredentials: Keystone or Neutron refused the credentials (401): wrong password,
	// unknown user or project, expired or deleted application credential, or a clouds.yaml entry
	// Keystone cannot use.
	CauseCredentials Cause = "credentials"
	// CauseForbidden: Neutron's policy refused the request (403), or the credentials cannot see
	// what they must (other projects' ports): the user lacks a role.
	CauseForbidden Cause = "forbidden"
	// CauseKeystoneUnreachable: a token was needed (the first one, or a new one after expiry) and
	// Keystone could not be reached or failed (connection, timeout, 5xx).
	CauseKeystoneUnreachable Cause = "keystone_unreachable"
	// CauseTLS: the certificate of Neutron or Keystone is not trusted (clouds.yaml cacert).
	CauseTLS Cause = "tls"
	// CauseBadResponse: an answer that cannot be used (another 4xx, a body that is not Neutron's,
	// a catalog without a network endpoint).
	CauseBadResponse Cause = "bad_response"
	// CauseSaturated: the cap on concurrent Neutron calls was reached and no call slot freed up
	// in time (Neutron is slow; see --neutron-max-concurrent). Set by the caller that holds the cap.
	CauseSaturated Cause = "saturated"
)

// Causes lists every Cause, in a fixed order.
func Causes() []Cause {
	return []Cause{CauseUnreachable, CauseTimeout, CauseServerError, CauseCredentials, CauseForbidden,
		CauseKeystoneUnreachable, CauseTLS, CauseBadResponse, CauseSaturated}
}

// Outage reports whether c means the OpenStack API is down or overloaded (unreachable, timeout,
// server error, Keystone unreachable, saturated): an old answer may then stand in for a fresh one
// for a bounded time. Any other cause means the API is up and says no, or says something unusable,
// so nothing old may be trusted in its place (Neutron may meanwhile give an address to a new VM).
func (c Cause) Outage() bool {
	switch c {
	case CauseUnreachable, CauseTimeout, CauseServerError, CauseKeystoneUnreachable, CauseSaturated:
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

// CauseOf returns the cause recorded in err's chain, if any.
func CauseOf(err error) (Cause, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Cause, true
	}
	return "", false
}

// Classify turns the error of a gophercloud call to Neutron made with a Network's client into an
// *Error that names the cause and says what to check. An *Error already in the chain (a failed
// authentication) is returned as it is. timedOut says whether the caller's own deadline for the
// call passed.
func Classify(err error, timedOut bool) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var reauth *gophercloud.ErrUnableToReauthenticate
	if errors.As(err, &reauth) { // does not unwrap: the re-authentication's own error is inside
		if errors.As(reauth.ErrReauth, &e) {
			return e
		}
		return keystoneError("re-authenticate", reauth.ErrReauth)
	}
	if code, ok := responseCode(err); ok {
		detail := neutronMessage(code.Body)
		var after *gophercloud.ErrErrorAfterReauthentication
		fresh := errors.As(err, &after)
		switch {
		case code.Actual == http.StatusUnauthorized && fresh:
			return &Error{Cause: CauseCredentials, Err: fmt.Errorf("Neutron refused a token Keystone had just issued (HTTP 401%s): check neutron-server's [keystone_authtoken] and that the user is enabled", detail)}
		case code.Actual == http.StatusUnauthorized:
			return &Error{Cause: CauseCredentials, Err: fmt.Errorf("Neutron refused the credentials (HTTP 401%s): a noauth --neutron-url to a Neutron that wants tokens? Use a clouds.yaml entry", detail)}
		case code.Actual == http.StatusForbidden:
			return &Error{Cause: CauseForbidden, Err: fmt.Errorf("Neutron's policy refused the request (HTTP 403%s): the user lacks a role (docs/migrate-from-neutron-metadata-agent.md, credentials)", detail)}
		case code.Actual == http.StatusTooManyRequests || code.Actual >= 500:
			return &Error{Cause: CauseServerError, Err: fmt.Errorf("Neutron answered HTTP %d%s", code.Actual, detail)}
		default:
			return &Error{Cause: CauseBadResponse, Err: fmt.Errorf("Neutron answered HTTP %d%s to %s %s", code.Actual, detail, code.Method, code.URL)}
		}
	}
	if cause, ok := transportCause(err); ok {
		return &Error{Cause: cause, Err: transportError("Neutron", cause, err)}
	}
	if timedOut || errors.Is(err, context.DeadlineExceeded) {
		return &Error{Cause: CauseTimeout, Err: fmt.Errorf("Neutron did not answer in time: %w", err)}
	}
	return &Error{Cause: CauseBadResponse, Err: fmt.Errorf("Neutron's answer cannot be used: %w", err)}
}

// keystoneError classifies a failed authentication. op is what was attempted.
func keystoneError(op string, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if code, ok := responseCode(err); ok {
		switch {
		case code.Actual >= 500:
			return &Error{Cause: CauseKeystoneUnreachable, Err: fmt.Errorf("%s: Keystone answered HTTP %d%s", op, code.Actual, keystoneMessage(code.Body))}
		case code.Actual == http.StatusNotFound:
			return &Error{Cause: CauseCredentials, Err: fmt.Errorf("%s: Keystone answered HTTP 404 at %s: is auth_url the identity v3 endpoint (https://keystone:5000/v3)?", op, code.URL)}
		default:
			return &Error{Cause: CauseCredentials, Err: fmt.Errorf("%s: Keystone refused the credentials (HTTP %d%s): check the password or application credential (not expired, not deleted), the user, project and domain names", op, code.Actual, keystoneMessage(code.Body))}
		}
	}
	if cause, ok := transportCause(err); ok {
		if cause != CauseTLS {
			cause = CauseKeystoneUnreachable
		}
		return &Error{Cause: cause, Err: fmt.Errorf("%s: %w", op, transportError("Keystone", cause, err))}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Cause: CauseKeystoneUnreachable, Err: fmt.Errorf("%s: Keystone did not answer in time: %w", op, err)}
	}
	// gophercloud's own checks of the options (no password, a scope with an application
	// credential, ...): the configuration.
	return &Error{Cause: CauseCredentials, Err: fmt.Errorf("%s: %w", op, err)}
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
		return CauseTLS, true
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return CauseTimeout, true
	}
	var (
		opErr  *net.OpError
		dnsErr *net.DNSError
		urlErr *url.Error
	)
	if errors.As(err, &opErr) || errors.As(err, &dnsErr) {
		return CauseUnreachable, true
	}
	if errors.As(err, &urlErr) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return CauseUnreachable, true // io.EOF, connection reset mid-answer: the peer went away
	}
	return "", false
}

func transportError(who string, cause Cause, err error) error {
	switch cause {
	case CauseTLS:
		return fmt.Errorf("%s's certificate is not trusted (clouds.yaml cacert, or the system's CAs): %w", who, err)
	case CauseTimeout:
		return fmt.Errorf("%s did not answer in time: %w", who, err)
	default:
		return fmt.Errorf("%s is unreachable: %w", who, err)
	}
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

// neutronMessage extracts the message of a Neutron error body ({"NeutronError": {"message": ...}})
// as ": <message>", shortened; "" when there is none.
func neutronMessage(body []byte) string {
	var e struct {
		NeutronError struct {
			Message string `json:"message"`
		} `json:"NeutronError"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	return shorten(e.NeutronError.Message)
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
