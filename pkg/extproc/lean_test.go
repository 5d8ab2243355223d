package extproc

import (
	"bytes"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/contract"
)

var traceKeep = leanDecoder{keep: map[string]bool{"traceparent": true, "tracestate": true}}

// envoyRequest is a request_headers message as Envoy sends it, with the VM's headers.
func envoyRequest(source *structpb.Value, headers ...string) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{}
	for i := 0; i+1 < len(headers); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: headers[i], RawValue: []byte(headers[i+1])})
	}
	fields := map[string]*structpb.Value{}
	if source != nil {
		fields[contract.SourceAddressAttribute] = source
	}
	return &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: true}},
		Attributes: map[string]*structpb.Struct{
			contract.ExtProcAttributesKey: {Fields: fields},
			"another.filter":              {Fields: map[string]*structpb.Value{"x": structpb.NewBoolValue(true)}},
		},
		MetadataContext: &corev3.Metadata{},
		ProtocolConfig:  &extprocv3.ProtocolConfiguration{},
	}
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLeanDecodeKeepsWhatTheDecisionReads: the source address and the trace-context headers come
// through; the VM's other headers, including forged identity headers, are not even copied.
func TestLeanDecodeKeepsWhatTheDecisionReads(t *testing.T) {
	b := marshal(t, envoyRequest(structpb.NewStringValue("10.0.0.5:41000"),
		":path", "/openstack", "x-instance-id", "forged", "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "user-agent", "curl"))
	var m extprocv3.ProcessingRequest
	if !traceKeep.decode(b, &m) {
		t.Fatal("an ordinary request_headers message was not decoded leanly")
	}
	if got := m.GetAttributes()[contract.ExtProcAttributesKey].GetFields()[contract.SourceAddressAttribute].GetStringValue(); got != "10.0.0.5:41000" {
		t.Errorf("source.address %q", got)
	}
	hs := m.GetRequestHeaders().GetHeaders().GetHeaders()
	if len(hs) != 1 || hs[0].GetKey() != "traceparent" || !bytes.HasPrefix(hs[0].GetRawValue(), []byte("00-0af7")) {
		t.Errorf("kept headers %v, want traceparent only", hs)
	}
	if !m.GetRequestHeaders().GetEndOfStream() {
		t.Error("end_of_stream lost")
	}
}

// TestLeanDecodeDefersToFullDecoding: whatever is not a plain request_headers message with a
// plain string source.address is left to the full decoder.
func TestLeanDecodeDefersToFullDecoding(t *testing.T) {
	for name, m := range map[string]*extprocv3.ProcessingRequest{
		"response headers": {Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{}}},
		"request body":     {Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte("x")}}},
		"no phase":         {MetadataContext: &corev3.Metadata{}},
		"numeric source":   envoyRequest(structpb.NewNumberValue(10)),
		"struct source":    envoyRequest(structpb.NewStructValue(&structpb.Struct{})),
		"empty source":     envoyRequest(&structpb.Value{}),
	} {
		t.Run(name, func(t *testing.T) {
			var got extprocv3.ProcessingRequest
			if traceKeep.decode(marshal(t, m), &got) {
				t.Fatalf("decoded leanly as %v", &got)
			}
		})
	}
}

// FuzzLeanDecode compares the lean decoder with protobuf's own: whenever both decode a message,
// they agree on everything the decision reads (the phase, source.address, the kept headers).
func FuzzLeanDecode(f *testing.F) {
	var seeds [][]byte
	for _, m := range []*extprocv3.ProcessingRequest{
		envoyRequest(structpb.NewStringValue("10.0.0.5:41000"), ":path", "/", "traceparent", "00-x", "TraceParent", "y"),
		envoyRequest(structpb.NewStringValue("[fe80::f816:3eff:fe00:1%eth0]:5"), "tracestate", "a=b"),
		envoyRequest(nil),
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{}}},
	} {
		seeds = append(seeds, marshal(f, m))
	}
	for _, a := range seeds {
		f.Add(a)
		// Two messages back to back read as one: protobuf merges request_headers and replaces
		// map entries, last one winning.
		for _, b := range seeds {
			f.Add(append(append([]byte{}, a...), b...))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var full extprocv3.ProcessingRequest
		fullErr := proto.Unmarshal(b, &full)
		var got extprocv3.ProcessingRequest
		if !traceKeep.decode(b, &got) || fullErr != nil {
			return
		}
		if full.GetRequestHeaders() == nil {
			t.Fatalf("lean decoded a message whose phase is %T", full.GetRequest())
		}
		if full.GetRequestHeaders().GetEndOfStream() != got.GetRequestHeaders().GetEndOfStream() {
			t.Error("end_of_stream differs")
		}
		wantAttrs, wantOK := full.GetAttributes()[contract.ExtProcAttributesKey]
		gotAttrs, gotOK := got.GetAttributes()[contract.ExtProcAttributesKey]
		if wantOK != gotOK {
			t.Fatalf("ext_proc attributes present: full %v, lean %v", wantOK, gotOK)
		}
		wantSrc, wantHas := wantAttrs.GetFields()[contract.SourceAddressAttribute]
		gotSrc, gotHas := gotAttrs.GetFields()[contract.SourceAddressAttribute]
		if wantHas != gotHas || !proto.Equal(wantSrc, gotSrc) {
			t.Fatalf("source.address: full %v (%v), lean %v (%v)", wantSrc, wantHas, gotSrc, gotHas)
		}
		var want []*corev3.HeaderValue
		for _, h := range full.GetRequestHeaders().GetHeaders().GetHeaders() {
			if traceKeep.keep[h.GetKey()] {
				want = append(want, h)
			}
		}
		gotHs := got.GetRequestHeaders().GetHeaders().GetHeaders()
		if len(want) != len(gotHs) {
			t.Fatalf("kept headers: full %v, lean %v", want, gotHs)
		}
		for i := range want {
			if want[i].GetKey() != gotHs[i].GetKey() || want[i].GetValue() != gotHs[i].GetValue() || !bytes.Equal(want[i].GetRawValue(), gotHs[i].GetRawValue()) {
				t.Fatalf("header %d: full %v, lean %v", i, want[i], gotHs[i])
			}
		}
	})
}

// TestLeanKnowsEveryPhase: every member of ProcessingRequest's request oneof is either the one
// decoded leanly or one that sends the message to the full decoder (a phase added to the proto
// must be added there too).
func TestLeanKnowsEveryPhase(t *testing.T) {
	oneof := (&extprocv3.ProcessingRequest{}).ProtoReflect().Descriptor().Oneofs().ByName("request")
	known := append([]protowire.Number{lean.requestHeaders}, lean.otherPhases[:]...)
	if oneof.Fields().Len() != len(known) {
		t.Fatalf("the request oneof has %d members, the lean decoder knows %d", oneof.Fields().Len(), len(known))
	}
	for i := range oneof.Fields().Len() {
		if f := oneof.Fields().Get(i); !slices.Contains(known, f.Number()) {
			t.Errorf("phase %s (%d) unknown to the lean decoder", f.Name(), f.Number())
		}
	}
}
