package translate

import (
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

func TestExtProcClusterTLS(t *testing.T) {
	for name, tc := range map[string]struct {
		ext              ExtProc
		wantSAN, wantSNI string
		wantType         tlsv3.SubjectAltNameMatcher_SanType
		plain            bool
	}{
		"dns name":         {ext: ExtProc{Address: "extproc.metaproxy.svc:50051"}, wantSAN: "extproc.metaproxy.svc", wantSNI: "extproc.metaproxy.svc", wantType: tlsv3.SubjectAltNameMatcher_DNS},
		"ip address":       {ext: ExtProc{Address: "[2001:db8::1]:50051"}, wantSAN: "2001:db8::1", wantType: tlsv3.SubjectAltNameMatcher_IP_ADDRESS},
		"named server":     {ext: ExtProc{Address: "10.0.0.9:50051", TLS: EnvoyTLS{ServerName: "extproc-1.example"}}, wantSAN: "extproc-1.example", wantSNI: "extproc-1.example", wantType: tlsv3.SubjectAltNameMatcher_DNS},
		"plain text (lab)": {ext: ExtProc{Address: "127.0.0.1:50051", Plaintext: true}, plain: true},
		"unix socket":      {ext: ExtProc{Address: "unix:///run/metaproxy/extproc.sock"}, plain: true},
	} {
		t.Run(name, func(t *testing.T) {
			s := DefaultSettings()
			dir := s.ExtProc.TLS.SDSDir
			s.ExtProc.Address, s.ExtProc.Plaintext = tc.ext.Address, tc.ext.Plaintext
			s.ExtProc.TLS.ServerName = tc.ext.TLS.ServerName
			c, err := ExtProcCluster(s)
			if err != nil {
				t.Fatal(err)
			}
			if tc.plain {
				if c.GetTransportSocket() != nil {
					t.Fatalf("transport socket %v, want plain text", c.GetTransportSocket())
				}
				return
			}
			var utc tlsv3.UpstreamTlsContext
			if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&utc); err != nil {
				t.Fatal(err)
			}
			ctc := utc.GetCommonTlsContext()
			sans := ctc.GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
			if len(sans) != 1 || sans[0].GetSanType() != tc.wantType || sans[0].GetMatcher().GetExact() != tc.wantSAN || utc.GetSni() != tc.wantSNI {
				t.Errorf("SAN %v, SNI %q; want %s %s and SNI %q", sans, utc.GetSni(), tc.wantType, tc.wantSAN, tc.wantSNI)
			}
			cert := ctc.GetTlsCertificateSdsSecretConfigs()
			ca := ctc.GetCombinedValidationContext().GetValidationContextSdsSecretConfig()
			if len(cert) != 1 || cert[0].GetName() != EnvoyClientSecret || cert[0].GetSdsConfig().GetPathConfigSource().GetPath() != dir+"/"+EnvoyClientSDSFile ||
				ca.GetName() != EnvoyCASecret || ca.GetSdsConfig().GetPathConfigSource().GetPath() != dir+"/"+EnvoyCASDSFile {
				t.Errorf("SDS secrets %v / %v, want %s and %s in %s", cert, ca, EnvoyClientSDSFile, EnvoyCASDSFile, dir)
			}
			if got := ctc.GetAlpnProtocols(); len(got) != 1 || got[0] != "h2" {
				t.Errorf("ALPN %v, want [h2] (gRPC servers refuse TLS without it)", got)
			}
		})
	}
}

func TestExtProcTLSSettingsAreValidated(t *testing.T) {
	s := DefaultSettings()
	s.ExtProc = ExtProc{Address: "extproc:50051", MessageTimeout: time.Second, TLS: EnvoyTLS{SDSDir: "relative/dir"}}
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "absolute path") {
		t.Errorf("relative SDS dir: %v", err)
	}
	s.ExtProc.Plaintext = true
	if err := s.Validate(); err != nil {
		t.Errorf("plain text needs no TLS settings: %v", err)
	}
}
