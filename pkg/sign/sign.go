// Package sign computes the X-Instance-ID-Signature that nova's metadata API checks:
// lowercase hex HMAC-SHA256 keyed with metadata_proxy_shared_secret over the instance id, both
// UTF-8, exactly as neutron's sign_instance_id (neutron/common/utils.py) does.
package sign

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
)

// Signer signs instance ids with one shared secret. It is safe for concurrent use and never exposes
// the secret.
type Signer struct {
	secret []byte
}

// New returns a Signer for secret. An empty secret is refused: nova would reject every request.
func New(secret []byte) (*Signer, error) {
	if len(secret) == 0 {
		return nil, errors.New("the metadata proxy shared secret is empty")
	}
	return &Signer{secret: append([]byte(nil), secret...)}, nil
}

// Size is the length of a signature in bytes (Sum); nova receives it hex-encoded, twice as long.
const Size = sha256.Size

// Sign returns hex(HMAC-SHA256(secret, instanceID)) in lowercase.
func (s *Signer) Sign(instanceID string) string {
	sum := s.Sum(instanceID)
	return hex.EncodeToString(sum[:])
}

// Sum returns HMAC-SHA256(secret, instanceID): the signature before hex encoding, half the memory
// of Sign's string for callers that keep many.
func (s *Signer) Sum(instanceID string) [Size]byte {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(instanceID))
	var sum [Size]byte
	m.Sum(sum[:0])
	return sum
}

const redacted = "sign.Signer{secret: <redacted>}"

// String hides the secret from fmt and slog.
func (Signer) String() string { return redacted }

// GoString hides the secret from %#v.
func (Signer) GoString() string { return redacted }
