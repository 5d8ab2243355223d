package sign

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// Vectors computed independently with:
//
//	printf %s "$ID" | openssl dgst -sha256 -hmac "$SECRET" -r
var vectors = map[string]struct{ secret, id, want string }{
	"uuid":                   {"s3cr3t", "0a1b2c3d-0000-4000-8000-000000000001", "5620efe30f91e1e5d1f6ce3eeb1d755eef49aee6a3b9a627f7130508a61d5aaa"},
	"empty id":               {"x", "", "f27e6527d6b8408430a666b746070c307f542bb54ee7e6dcb303f3e52c0b09fb"},
	"utf-8 secret and id":    {"päss wörd", "ünïcode-id", "d5982f3299bfcac35c382340f607467af9c22b6100451dcb129cb72b984a45e1"},
	"secret over block size": {strings.Repeat("k", 100), "6fa459ea-ee8a-3ca4-894e-db77e160355e", "1a369219a063d58bdf97e5832c0174279636b87f059ee464ee88f9035cc17cb0"},
}

func TestSignFixedVectors(t *testing.T) {
	for name, v := range vectors {
		t.Run(name, func(t *testing.T) {
			s, err := New([]byte(v.secret))
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Sign(v.id); got != v.want {
				t.Errorf("Sign(%q) = %s, want %s", v.id, got, v.want)
			}
		})
	}
}

// TestSignMatchesOpenSSL recomputes every vector with the openssl binary, so the fixed values above
// cannot silently drift from the reference implementation.
func TestSignMatchesOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (make deps installs it)")
	}
	for name, v := range vectors {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command("openssl", "dgst", "-sha256", "-hmac", v.secret, "-r")
			cmd.Stdin = strings.NewReader(v.id)
			out, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			want := strings.Fields(string(out))[0]
			s, _ := New([]byte(v.secret))
			if got := s.Sign(v.id); got != want {
				t.Errorf("Sign = %s, openssl = %s", got, want)
			}
		})
	}
}

func TestNewRefusesEmptySecret(t *testing.T) {
	if _, err := New(nil); err == nil {
		t.Fatal("want an error for an empty secret")
	}
}

func TestSecretIsCopiedAndNeverPrinted(t *testing.T) {
	secret := []byte("s3cr3t")
	s, _ := New(secret)
	before := s.Sign("id")
	copy(secret, "XXXXXX")
	if s.Sign("id") != before {
		t.Error("changing the caller's slice changed the signature")
	}
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v", s), fmt.Sprintf("%+v", s), fmt.Sprintf("%#v", *s)} {
		if out != redacted {
			t.Errorf("formatted signer = %s, want %s", out, redacted)
		}
	}
}

func BenchmarkSign(b *testing.B) {
	s, _ := New([]byte("s3cr3t"))
	for b.Loop() {
		_ = s.Sign("0a1b2c3d-0000-4000-8000-000000000001")
	}
}
